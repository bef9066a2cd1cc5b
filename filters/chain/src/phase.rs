//! One phase of the chain as a [`Host`]: every stage runs its standalone code against it.
//!
//! # Reads
//!
//! What the phase reads from Envoy is planned at configure time ([`ReadPlan`]): the union of
//! the stages' own read plans, minus the headers an earlier stage always writes (the auth
//! stage's identity header), priced with the probe table of docs/benchmarks.md: nothing, single
//! reads when one name is needed (~10,700 instructions each), the whole map in one call
//! (~16,200) when more are. A stage reading a header an earlier stage wrote gets the written
//! value from memory (the consumer the auth stage sets reaches the rate limiter without a host
//! call). Unplanned reads still work (a single read, or the whole map), they only cost more.
//!
//! # Writes
//!
//! Writes are kept in memory, as a short list of changed names (an overlay on what Envoy has),
//! and reach the host once, in [`Phase::finish`]: the changed headers by single calls, or one
//! whole-map write when the whole map was read and the probe-table estimate says that is
//! cheaper. A write whose result equals what Envoy already has (known from a whole read) is
//! dropped. Nothing scans the whole map at the end: the cost is per changed name. The phase's
//! last stage gets the map itself, not a copy, when it reads it whole ([`Phase::last_stage`]):
//! one map per phase, as in a standalone filter.
//!
//! # Clock
//!
//! The first `now` of the phase asks the host; later stages get the same instant without a
//! host call. Everything else (properties, shared data, callouts, metrics, the other map)
//! passes through.

use std::time::{Duration, SystemTime};

use filter_core::host::Property;
use filter_core::{HeaderMap, HeaderMapKind, Host, HostError, LocalReply, MetricKind};
use headers::write_cost as cost;

/// How a phase reads its header map from the host, decided at configure time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ReadPlan {
    /// No stage reads the map (reads, if any, fall back to single reads).
    #[default]
    Nothing,
    /// Exactly one header is needed: single reads.
    One(String),
    /// Several headers, or a stage reads the whole map: one whole-map read.
    Whole,
}

impl ReadPlan {
    /// The plan for stages whose own plans are `needs` (in order; `None`: the whole map), where
    /// `written[i]` lists the headers stage `i` always writes before a later stage runs (their
    /// reads are served from memory, so they are not read from the host).
    pub fn union<'a>(
        needs: impl IntoIterator<Item = (Option<&'a [String]>, &'a [String])>,
    ) -> Self {
        let mut names: Vec<&str> = Vec::new();
        let mut produced: Vec<&str> = Vec::new();
        for (need, writes) in needs {
            let Some(need) = need else {
                return Self::Whole;
            };
            for n in need {
                let seen = |v: &Vec<&str>| v.iter().any(|x| x.eq_ignore_ascii_case(n));
                if !seen(&produced) && !seen(&names) {
                    names.push(n);
                }
            }
            produced.extend(writes.iter().map(String::as_str));
        }
        match names.as_slice() {
            [] => Self::Nothing,
            // Two single reads (~21,400) cost more than one whole-map read (~16,200).
            [one] => Self::One(one.to_ascii_lowercase()),
            _ => Self::Whole,
        }
    }
}

/// What the phase knows of the host's map.
#[derive(Debug)]
enum Base {
    /// Single headers read so far: name and first value (`None`: absent).
    Singles(Vec<(String, Option<String>)>),
    /// The whole map.
    Whole(HeaderMap),
    /// The whole map was handed to the phase's last stage (no clone); nothing reads it again.
    Moved,
}

/// What the phase knew of a header on the host when a stage first changed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Had {
    Absent,
    /// Present with this many values.
    Present(usize),
    Unknown,
}

impl Had {
    fn present(self) -> Option<bool> {
        match self {
            Self::Absent => Some(false),
            Self::Present(_) => Some(true),
            Self::Unknown => None,
        }
    }
}

/// A changed header.
#[derive(Debug)]
enum Change {
    /// Every value replaced by these (empty: removed).
    Set(Vals),
    /// These values added to whatever the host has (not read).
    Add(Vals),
}

/// A header's values: almost always one, kept without a second allocation.
#[derive(Debug, Default)]
struct Vals {
    first: Option<String>,
    more: Vec<String>,
}

impl Vals {
    fn one(v: String) -> Self {
        Self {
            first: Some(v),
            more: Vec::new(),
        }
    }

    fn push(&mut self, v: String) {
        if self.first.is_none() {
            self.first = Some(v);
        } else {
            self.more.push(v);
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn first(&self) -> Option<&String> {
        self.first.as_ref()
    }

    fn split_first(&self) -> Option<(&String, &[String])> {
        self.first.as_ref().map(|f| (f, self.more.as_slice()))
    }

    fn iter(&self) -> impl Iterator<Item = &String> {
        self.first.iter().chain(self.more.iter())
    }
}

/// One changed header: its name (lower case), the change, and what the host had.
#[derive(Debug)]
struct Entry {
    name: String,
    change: Change,
    had: Had,
}

/// The chain's view of one phase over the real host `H`.
pub struct Phase<'h, H: Host> {
    host: &'h mut H,
    kind: HeaderMapKind,
    plan: &'h ReadPlan,
    base: Base,
    /// Changed headers, in first-change order.
    overlay: Vec<Entry>,
    /// The next whole-map read may take the map instead of cloning it (the last stage runs).
    hand_over: bool,
    /// A stage replaced the whole map: it is written whole at the end.
    replaced: bool,
    now: Option<SystemTime>,
}

fn lower(name: &str) -> String {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase()
    } else {
        name.to_owned()
    }
}

impl<'h, H: Host> Phase<'h, H> {
    /// A phase addressing `kind` on `host`, reading as `plan` says.
    pub fn new(host: &'h mut H, kind: HeaderMapKind, plan: &'h ReadPlan) -> Self {
        Self {
            host,
            kind,
            plan,
            base: Base::Singles(Vec::new()),
            overlay: Vec::with_capacity(8),
            hand_over: false,
            replaced: false,
            now: None,
        }
    }

    /// The phase's last stage is about to run: a whole-map read from it takes the map (with
    /// this phase's changes applied) instead of a copy. Writes after that are issued as the
    /// stage makes them (add stays add, replace stays replace).
    pub fn last_stage(&mut self) {
        self.hand_over = true;
    }

    fn read_whole(&mut self) -> Result<&mut HeaderMap, HostError> {
        if !matches!(self.base, Base::Whole(_)) {
            self.base = Base::Whole(self.host.header_map(self.kind)?);
        }
        match &mut self.base {
            Base::Whole(m) => Ok(m),
            Base::Singles(_) | Base::Moved => Err(HostError::Failed {
                call: "get_header_map_pairs",
                detail: "not read".into(),
            }),
        }
    }

    /// The host's first value of `name` (before this phase's changes).
    fn base_value(&mut self, name: &str) -> Result<Option<String>, HostError> {
        match &self.base {
            Base::Whole(m) => return Ok(m.get(name).map(str::to_owned)),
            Base::Singles(read) => {
                if let Some((_, v)) = read.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                    return Ok(v.clone());
                }
            }
            Base::Moved => {}
        }
        if *self.plan == ReadPlan::Whole && !matches!(self.base, Base::Moved) {
            return Ok(self.read_whole()?.get(name).map(str::to_owned));
        }
        let v = self.host.header(self.kind, name)?;
        if let Base::Singles(read) = &mut self.base {
            read.push((lower(name), v.clone()));
        }
        Ok(v)
    }

    /// What the phase knows of the host's values of `name`.
    fn known(&self, name: &str) -> Had {
        match &self.base {
            Base::Whole(m) => match values(m, name).count() {
                0 => Had::Absent,
                n => Had::Present(n),
            },
            Base::Singles(read) => match read.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some((_, None)) => Had::Absent,
                _ => Had::Unknown,
            },
            Base::Moved => Had::Unknown,
        }
    }

    fn entry(&mut self, name: &str) -> Option<&mut Entry> {
        self.overlay
            .iter_mut()
            .find(|e| e.name.eq_ignore_ascii_case(name))
    }

    fn set_change(&mut self, name: &str, change: Change) {
        if let Some(e) = self.entry(name) {
            e.change = change;
            return;
        }
        let had = self.known(name);
        self.overlay.push(Entry {
            name: lower(name),
            change,
            had,
        });
    }

    /// Drops every pending write (the chain answers locally; nothing goes upstream).
    pub fn discard(self) {}

    /// Writes the phase's changes to the host: once, at the end of the phase.
    pub fn finish(mut self) {
        let kind = self.kind;
        if self.replaced {
            if let Base::Whole(m) = &mut self.base {
                apply(m, &self.overlay);
                let _ = self.host.set_header_map(kind, m);
            }
            return;
        }
        let base = match &self.base {
            Base::Whole(m) => Some(m),
            Base::Singles(_) | Base::Moved => None,
        };
        // The writes, and the pairs of the map after them when the whole map is known.
        let mut writes: Vec<&Entry> = Vec::with_capacity(self.overlay.len());
        let mut pairs = base.map_or(0, |m| m.pairs.len());
        for e in &self.overlay {
            match &e.change {
                Change::Set(vs) => {
                    if let Had::Present(n) = e.had {
                        pairs = pairs.saturating_sub(n);
                    }
                    pairs += vs.len();
                    let unchanged = match base {
                        Some(m) => values(m, &e.name).eq(vs.iter().map(String::as_str)),
                        None => vs.is_empty() && e.had == Had::Absent,
                    };
                    if !unchanged {
                        writes.push(e);
                    }
                }
                Change::Add(vs) if vs.is_empty() => {}
                Change::Add(vs) => {
                    pairs += vs.len();
                    writes.push(e);
                }
            }
        }
        if writes.is_empty() {
            return;
        }
        if writes.len() > 1
            && let Some(m) = base
        {
            let mut replaced_once = false;
            let single: u32 = writes
                .iter()
                .map(|e| single_cost(&e.change, e.had.present(), &mut replaced_once))
                .sum();
            let pairs = u32::try_from(pairs).unwrap_or(u32::MAX);
            let whole =
                cost::WHOLE_MAP_BASE.saturating_add(cost::WHOLE_MAP_PER_PAIR.saturating_mul(pairs));
            if whole < single {
                let mut after = m.clone();
                apply(&mut after, &self.overlay);
                let _ = self.host.set_header_map(kind, &after);
                return;
            }
        }
        for e in writes {
            let name = e.name.as_str();
            match &e.change {
                Change::Set(vs) => match (vs.split_first(), e.had) {
                    (None, Had::Absent) => {}
                    (None, _) => {
                        let _ = self.host.remove_header(kind, name);
                    }
                    (Some((first, rest)), had) => {
                        let _ = if had == Had::Absent {
                            self.host.add_header(kind, name, first)
                        } else {
                            self.host.replace_header(kind, name, first)
                        };
                        for v in rest {
                            let _ = self.host.add_header(kind, name, v);
                        }
                    }
                },
                Change::Add(vs) => {
                    for v in vs.iter() {
                        let _ = self.host.add_header(kind, name, v);
                    }
                }
            }
        }
    }
}

/// Probe-table cost of writing one change by single calls.
fn single_cost(change: &Change, had: Option<bool>, replaced_once: &mut bool) -> u32 {
    let adds = |n: usize| cost::ADD.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
    match change {
        Change::Add(vs) => adds(vs.len()),
        Change::Set(vs) if vs.is_empty() => {
            if had == Some(false) {
                0
            } else {
                cost::REMOVE
            }
        }
        Change::Set(vs) if had == Some(false) => adds(vs.len()),
        Change::Set(vs) => {
            let r = if std::mem::replace(replaced_once, true) {
                cost::REPLACE_MORE
            } else {
                cost::REPLACE_FIRST
            };
            r.saturating_add(adds(vs.len().saturating_sub(1)))
        }
    }
}

/// Applies the changes to `map`.
fn apply(map: &mut HeaderMap, overlay: &[Entry]) {
    for e in overlay {
        let name = e.name.as_str();
        match &e.change {
            Change::Set(vs) => {
                let mut vs = vs.iter();
                match vs.next() {
                    Some(first) => map.set(name, first.clone()),
                    None => {
                        map.remove(name);
                    }
                }
                for v in vs {
                    map.add(name, v.clone());
                }
            }
            Change::Add(vs) => {
                for v in vs.iter() {
                    map.add(name, v.clone());
                }
            }
        }
    }
}

fn values<'m>(map: &'m HeaderMap, name: &'m str) -> impl Iterator<Item = &'m str> + 'm {
    map.pairs
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl<H: Host> Host for Phase<'_, H> {
    fn header_map(&mut self, kind: HeaderMapKind) -> Result<HeaderMap, HostError> {
        if kind != self.kind {
            return self.host.header_map(kind);
        }
        if matches!(self.base, Base::Moved) {
            // Read again after the hand-over (not planned): a fresh copy.
            let mut map = self.host.header_map(kind)?;
            apply(&mut map, &self.overlay);
            return Ok(map);
        }
        self.read_whole()?;
        let mut map = if self.hand_over {
            match std::mem::replace(&mut self.base, Base::Moved) {
                Base::Whole(m) => m,
                other => {
                    self.base = other;
                    HeaderMap::default()
                }
            }
        } else {
            self.read_whole()?.clone()
        };
        apply(&mut map, &self.overlay);
        Ok(map)
    }

    fn header(&mut self, kind: HeaderMapKind, name: &str) -> Result<Option<String>, HostError> {
        if kind != self.kind {
            return self.host.header(kind, name);
        }
        let added = match self.entry(name).map(|e| &e.change) {
            Some(Change::Set(vs)) => return Ok(vs.first().cloned()),
            Some(Change::Add(vs)) => vs.first().cloned(),
            None => None,
        };
        let base = self.base_value(name)?;
        Ok(base.or(added))
    }

    fn set_header_map(&mut self, kind: HeaderMapKind, map: &HeaderMap) -> Result<(), HostError> {
        if kind != self.kind {
            return self.host.set_header_map(kind, map);
        }
        self.overlay.clear();
        self.base = Base::Whole(map.clone());
        self.replaced = true;
        Ok(())
    }

    fn replace_header(
        &mut self,
        kind: HeaderMapKind,
        name: &str,
        value: &str,
    ) -> Result<(), HostError> {
        if kind != self.kind {
            return self.host.replace_header(kind, name, value);
        }
        self.set_change(name, Change::Set(Vals::one(value.to_owned())));
        Ok(())
    }

    fn add_header(
        &mut self,
        kind: HeaderMapKind,
        name: &str,
        value: &str,
    ) -> Result<(), HostError> {
        if kind != self.kind {
            return self.host.add_header(kind, name, value);
        }
        if let Some(Entry {
            change: Change::Set(vs) | Change::Add(vs),
            ..
        }) = self.entry(name)
        {
            vs.push(value.to_owned());
            return Ok(());
        }
        let had = self.known(name);
        let change = match (had, &self.base) {
            (Had::Absent, _) => Change::Set(Vals::one(value.to_owned())),
            // Known: the result is exactly the host's values plus this one.
            (Had::Present(_), Base::Whole(m)) => {
                let mut vs = Vals::default();
                for v in values(m, name) {
                    vs.push(v.to_owned());
                }
                vs.push(value.to_owned());
                Change::Set(vs)
            }
            _ => Change::Add(Vals::one(value.to_owned())),
        };
        self.overlay.push(Entry {
            name: lower(name),
            change,
            had,
        });
        Ok(())
    }

    fn remove_header(&mut self, kind: HeaderMapKind, name: &str) -> Result<(), HostError> {
        if kind != self.kind {
            return self.host.remove_header(kind, name);
        }
        self.set_change(name, Change::Set(Vals::default()));
        Ok(())
    }

    fn property(&mut self, path: Property<'_>) -> Result<Option<Vec<u8>>, HostError> {
        self.host.property(path)
    }

    fn send_local_reply(&mut self, reply: &LocalReply) -> Result<(), HostError> {
        self.host.send_local_reply(reply)
    }

    fn shared_data(&mut self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        self.host.shared_data(key)
    }

    fn set_shared_data(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), HostError> {
        self.host.set_shared_data(key, value, cas)
    }

    fn http_call(
        &mut self,
        upstream: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.host.http_call(upstream, headers, body, timeout)
    }

    fn grpc_call(
        &mut self,
        upstream: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.host
            .grpc_call(upstream, service, method, message, timeout)
    }

    fn now(&mut self) -> SystemTime {
        *self.now.get_or_insert_with(|| self.host.now())
    }

    fn random_u64(&mut self) -> u64 {
        self.host.random_u64()
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.host.define_metric(kind, name)
    }

    fn increment_metric(&mut self, id: u32, delta: i64) -> Result<(), HostError> {
        self.host.increment_metric(id, delta)
    }

    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), HostError> {
        self.host.record_metric(id, value)
    }
}

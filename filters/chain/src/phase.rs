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
//! A one-header read ([`Host::header_into`], what `filter_core::OneHeader` uses) is copied into
//! the caller's buffer: no value is allocated per read.
//!
//! # Writes
//!
//! Once the whole map has been read, a write goes to the host as the stage makes it, as its
//! standalone filter's would, and patches the phase's copy of the map (later stages read the
//! result from memory); a write that leaves the map as it is (known from the read) is dropped.
//! A stage the chain proved at configure time that no later stage observes
//! ([`Phase::leave_out_of_map`]) skips the patch: its writes reach the host only.
//! Measured in a V8 harness of the bench's chain (API key, limit, headers job), this costs
//! ~1,100 instructions per request less than keeping those changes pending. Writes made before
//! the map was read are kept in memory, as a short list of changed names (an overlay on what
//! Envoy has), and reach the host once, in order: the changed headers by single calls, or one
//! whole-map write when the whole map is known by then and the probe-table estimate says that
//! is cheaper. The phase's last stage gets the map itself, not a copy, when it reads it whole
//! ([`Phase::last_stage`]): one map per phase, as in a standalone filter. That hand-over is
//! when pending changes are written (what stacked filters would have written before the last
//! one ran); from then on the last stage works on the host directly. Otherwise pending changes
//! are written in [`Phase::finish`]; [`Phase::discard`] (a local reply) drops those not yet
//! written, while changes already made stay made, as with stacked filters.
//!
//! # Clock
//!
//! The first `now` of the phase asks the host; later stages get the same instant without a
//! host call. Everything else (properties, shared data, callouts, metrics, the other map)
//! passes through.

use std::time::{Duration, SystemTime};

use filter_core::host::Property;
use filter_core::{HeaderMap, HeaderMapKind, Host, HostError, LocalReply, MetricKind, name_eq};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Had {
    #[default]
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

/// A header's values. The buffers are kept when the overlay is cleared (see [`Overlay`]):
/// `items[..len]` are the values, the rest spare strings reused by the next push.
#[derive(Debug, Default)]
struct Vals {
    items: Vec<String>,
    len: usize,
    /// A value longer than [`Overlay::KEEP_BYTES`] was pushed since the last recycle.
    big: bool,
}

impl Vals {
    fn clear(&mut self) {
        self.len = 0;
    }

    fn push(&mut self, v: &str) {
        match self.items.get_mut(self.len) {
            Some(spare) if spare.capacity() <= Overlay::KEEP_BYTES => {
                spare.clear();
                spare.push_str(v);
            }
            // A spare grown past the bound by an earlier request is not kept.
            Some(spare) => *spare = v.to_owned(),
            None => self.items.push(v.to_owned()),
        }
        self.big |= v.len() > Overlay::KEEP_BYTES;
        self.len += 1;
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn as_slice(&self) -> &[String] {
        self.items.get(..self.len).unwrap_or(&[])
    }

    fn first(&self) -> Option<&str> {
        self.as_slice().first().map(String::as_str)
    }

    fn split_first(&self) -> Option<(&String, &[String])> {
        self.as_slice().split_first()
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.as_slice().iter().map(String::as_str)
    }
}

/// One changed header: its name (lower case), its values, and what the host had.
#[derive(Debug, Default)]
struct Entry {
    name: String,
    /// `true`: every value replaced by `vals` (empty: removed). `false`: `vals` added to
    /// whatever the host has (not read).
    set: bool,
    vals: Vals,
    had: Had,
    /// Whether the change must reach the host (worked out once, when the phase writes).
    write: bool,
}

/// The changed headers of a phase, in first-change order. Clearing keeps the entries' string
/// buffers, so a chain that hands its overlay from request to request (one per worker, see
/// [`crate::Compiled`]) writes names and values into memory it already has instead of
/// allocating a few strings per header per request. What it keeps is bounded: at most
/// [`Overlay::KEEP`] entries, each with buffers no larger than [`Overlay::KEEP_BYTES`].
#[derive(Debug, Default)]
pub struct Overlay {
    entries: Vec<Entry>,
    len: usize,
}

impl Overlay {
    /// Entries kept for reuse after a phase.
    pub const KEEP: usize = 16;
    /// Largest string buffer kept for reuse.
    pub const KEEP_BYTES: usize = 1024;

    fn live(&self) -> &[Entry] {
        self.entries.get(..self.len).unwrap_or(&[])
    }

    fn live_mut(&mut self) -> &mut [Entry] {
        self.entries.get_mut(..self.len).unwrap_or(&mut [])
    }

    fn find(&self, name: &str) -> Option<&Entry> {
        self.live().iter().find(|e| name_eq(&e.name, name))
    }

    fn find_mut(&mut self, name: &str) -> Option<&mut Entry> {
        self.entries
            .get_mut(..self.len)?
            .iter_mut()
            .find(|e| name_eq(&e.name, name))
    }

    /// A new entry for `name` (lower-cased), with no values.
    fn push(&mut self, name: &str, set: bool, had: Had) -> Option<&mut Entry> {
        if self.len == self.entries.len() {
            self.entries.push(Entry::default());
        }
        let e = self.entries.get_mut(self.len)?;
        self.len += 1;
        if e.name.capacity() > Self::KEEP_BYTES {
            e.name = String::new();
        }
        lower_into(&mut e.name, name);
        e.set = set;
        e.vals.clear();
        e.had = had;
        Some(e)
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    /// Cleared for the next phase, dropping entries beyond [`Overlay::KEEP`], values beyond it
    /// per entry, and string buffers grown past [`Overlay::KEEP_BYTES`].
    fn recycle(mut self) -> Self {
        self.len = 0;
        if self.entries.len() > Self::KEEP {
            self.entries.truncate(Self::KEEP);
        }
        for e in &mut self.entries {
            if e.vals.items.len() > Self::KEEP {
                e.vals.items.truncate(Self::KEEP);
            }
            if e.vals.big {
                e.vals.big = false;
                e.vals.items.retain(|v| v.capacity() <= Self::KEEP_BYTES);
            }
            if e.name.capacity() > Self::KEEP_BYTES {
                e.name = String::new();
            }
        }
        self
    }
}

/// The chain's view of one phase over the real host `H`.
pub struct Phase<'h, H: Host> {
    host: &'h mut H,
    kind: HeaderMapKind,
    plan: &'h ReadPlan,
    base: Base,
    /// Changed headers, in first-change order.
    overlay: Overlay,
    /// The next whole-map read may take the map instead of cloning it (the last stage runs).
    hand_over: bool,
    /// A stage replaced the whole map: it is written whole at the end.
    replaced: bool,
    /// The map was handed to the last stage and the earlier stages' changes written: from
    /// then on, calls on this phase's map go straight to the host, as a standalone filter's.
    through: bool,
    now: Option<SystemTime>,
    /// The buffers of the last pair a write removed from the read map, for the next pair a
    /// write appends (the auth stage removes the credential and adds the identity header):
    /// the map given back for the next read keeps the same buffers instead of losing one pair
    /// and gaining a new one, whose strings would be allocated, freed and grown per request.
    spare: Option<(String, String)>,
    /// The running stage's writes reach the host without being copied into the read map: no
    /// later stage reads or writes any header it may write, and it writes each at most once
    /// (proved at configure time, see [`Phase::leave_out_of_map`]).
    leave: bool,
    /// A write was left out of the read map: the map now lacks changes the host has.
    left: bool,
}

fn lower(name: &str) -> String {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase()
    } else {
        name.to_owned()
    }
}

/// `name`, lower case, into `out`'s buffer.
fn lower_into(out: &mut String, name: &str) {
    out.clear();
    out.push_str(name);
    out.make_ascii_lowercase();
}

/// Appends `name: value` to the read map, in the buffers of the last pair a write removed when
/// there is one (the phase's `spare`).
fn append(m: &mut HeaderMap, spare: &mut Option<(String, String)>, name: &str, value: &str) {
    let pair = match spare.take() {
        Some((mut n, mut v)) => {
            lower_into(&mut n, name);
            v.clear();
            v.push_str(value);
            (n, v)
        }
        None => (lower(name), value.to_owned()),
    };
    m.pairs.push(pair);
}

impl<'h, H: Host> Phase<'h, H> {
    /// A phase addressing `kind` on `host`, reading as `plan` says.
    pub fn new(host: &'h mut H, kind: HeaderMapKind, plan: &'h ReadPlan) -> Self {
        Self::with_overlay(host, kind, plan, Overlay::default())
    }

    /// As [`Phase::new`], writing its changes into `overlay`'s buffers (a previous phase's,
    /// returned by [`Phase::finish`] or [`Phase::discard`]), so names and values are copied
    /// into memory already allocated.
    pub fn with_overlay(
        host: &'h mut H,
        kind: HeaderMapKind,
        plan: &'h ReadPlan,
        mut overlay: Overlay,
    ) -> Self {
        overlay.clear();
        Self {
            host,
            kind,
            plan,
            base: Base::Singles(Vec::new()),
            overlay,
            hand_over: false,
            replaced: false,
            through: false,
            now: None,
            spare: None,
            leave: false,
            left: false,
        }
    }

    /// Whether the stage about to run may leave its writes out of the phase's copy of the map
    /// (default no). The chain says yes only where it proved at configure time that no later
    /// stage reads or writes any header the stage may write and that the stage writes each of
    /// them at most once per request: the map then holds exactly what later stages look at,
    /// without the copies. Every write still reaches the host as made. From the first write
    /// left out, the phase refuses whole-map writes ([`Host::whole_map_writes`]: the map would
    /// undo it) and answers a whole-map read before the hand-over from the host.
    pub fn leave_out_of_map(&mut self, leave: bool) {
        self.leave = leave;
    }

    /// The phase's last stage is about to run: a whole-map read from it takes the map (with
    /// this phase's changes applied) instead of a copy, and writes the earlier stages' changes
    /// to the host then (what stacked filters would have written before it ran). From then on
    /// the stage works on the host directly, exactly as its standalone filter: its writes are
    /// issued as it makes them, with no bookkeeping in the phase.
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
                if let Some((_, v)) = read.iter().find(|(n, _)| name_eq(n, name)) {
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
            Base::Singles(read) => match read.iter().find(|(n, _)| name_eq(n, name)) {
                Some((_, None)) => Had::Absent,
                _ => Had::Unknown,
            },
            Base::Moved => Had::Unknown,
        }
    }

    /// The whole map, when a write can go straight to the host and patch it: it was read, not
    /// replaced by a stage, and no change is pending (those are written in order at the end).
    /// With it, the spare buffers of the last pair removed from it.
    #[allow(clippy::type_complexity)]
    fn through_map(&mut self) -> Option<(&mut HeaderMap, &mut H, &mut Option<(String, String)>)> {
        if self.replaced || self.overlay.len > 0 {
            return None;
        }
        match &mut self.base {
            Base::Whole(m) => Some((m, &mut *self.host, &mut self.spare)),
            Base::Singles(_) | Base::Moved => None,
        }
    }

    /// Replaces every value of `name` with `value` (`None`: removes it) on the host and in the
    /// read map, when writes go straight through ([`Phase::through_map`]); false otherwise.
    #[inline(never)]
    fn set_through(&mut self, name: &str, value: Option<&str>) -> bool {
        let (kind, leave) = (self.kind, self.leave);
        let Some((m, host, spare)) = self.through_map() else {
            return false;
        };
        // Written as the stage makes it, as its standalone filter would; nothing when the
        // map already holds exactly that.
        let (mut count, mut at, mut first_same) = (0usize, 0usize, false);
        for (i, (k, v)) in m.pairs.iter().enumerate() {
            if name_eq(k, name) {
                if count == 0 {
                    at = i;
                    first_same = value == Some(v.as_str());
                }
                count += 1;
            }
        }
        let same = match value {
            Some(_) => first_same && count == 1,
            None => count == 0,
        };
        match value {
            _ if same => {}
            None if leave => {
                let _ = host.remove_header(kind, name);
            }
            Some(v) if leave => {
                let _ = if count == 0 {
                    host.add_header(kind, name, v)
                } else {
                    host.replace_header(kind, name, v)
                };
            }
            None => {
                if count == 1 {
                    // (Its position is known: no second scan.)
                    *spare = Some(m.pairs.remove(at));
                } else {
                    remove(m, name);
                }
                let _ = host.remove_header(kind, name);
            }
            Some(v) if count == 0 => {
                append(m, spare, name, v);
                let _ = host.add_header(kind, name, v);
            }
            Some(v) => {
                match m.pairs.get_mut(at) {
                    Some(pair) if count == 1 => v.clone_into(&mut pair.1),
                    _ => m.set(name, v.to_owned()),
                }
                let _ = host.replace_header(kind, name, v);
            }
        }
        self.left |= leave && !same;
        true
    }

    /// Replaces every value of `name` with `value` (`None`: removes it).
    fn set_change(&mut self, name: &str, value: Option<&str>) {
        if self.set_through(name, value) {
            return;
        }
        let new = self
            .overlay
            .find_mut(name)
            .is_none()
            .then(|| self.known(name));
        let e = match new {
            None => self.overlay.find_mut(name),
            Some(had) => self.overlay.push(name, true, had),
        };
        let Some(e) = e else {
            return;
        };
        e.set = true;
        e.vals.clear();
        if let Some(v) = value {
            e.vals.push(v);
        }
    }

    /// Drops every pending write (the chain answers locally; nothing goes upstream); returns
    /// the overlay's buffers for the next phase.
    pub fn discard(mut self) -> Overlay {
        self.give_back_map();
        self.overlay.recycle()
    }

    /// The read map, if the phase still holds it, back to the host for its next read.
    fn give_back_map(&mut self) {
        if let Base::Whole(m) = std::mem::replace(&mut self.base, Base::Moved) {
            self.host.recycle_header_map(m);
        }
    }

    /// Writes the phase's changes to the host: once, at the end of the phase. Returns the
    /// overlay's buffers for the next phase.
    pub fn finish(mut self) -> Overlay {
        self.write();
        self.give_back_map();
        self.overlay.recycle()
    }

    fn write(&mut self) {
        let kind = self.kind;
        if self.replaced {
            if let Base::Whole(m) = &mut self.base {
                apply(m, self.overlay.live());
                let _ = self.host.set_header_map(kind, m);
            }
            return;
        }
        let base = match &self.base {
            Base::Whole(m) => Some(m),
            Base::Singles(_) | Base::Moved => None,
        };
        // How many writes (each entry's need worked out once), and the pairs of the map after
        // them when the whole map is known.
        let mut writes = 0usize;
        let mut pairs = base.map_or(0, |m| m.pairs.len());
        for e in self.overlay.live_mut() {
            if e.set
                && let Had::Present(n) = e.had
            {
                pairs = pairs.saturating_sub(n);
            }
            pairs += e.vals.len();
            e.write = needs_write(e, base);
            writes += usize::from(e.write);
        }
        if writes == 0 {
            return;
        }
        let live = self.overlay.live();
        if writes > 1
            && let Some(m) = base
        {
            let mut replaced_once = false;
            let single: u32 = live
                .iter()
                .filter(|e| e.write)
                .map(|e| single_cost(e, &mut replaced_once))
                .sum();
            let pairs = u32::try_from(pairs).unwrap_or(u32::MAX);
            let whole =
                cost::WHOLE_MAP_BASE.saturating_add(cost::WHOLE_MAP_PER_PAIR.saturating_mul(pairs));
            // (Not over a value read lossily: the write would replace the client's bytes.)
            if whole < single && !m.may_hold_lossy_values() && !self.left {
                let mut after = m.clone();
                apply(&mut after, live);
                let _ = self.host.set_header_map(kind, &after);
                return;
            }
        }
        for e in live.iter().filter(|e| e.write) {
            let name = e.name.as_str();
            if e.set {
                match (e.vals.split_first(), e.had) {
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
                }
            } else {
                for v in e.vals.iter() {
                    let _ = self.host.add_header(kind, name, v);
                }
            }
        }
    }
}

/// Whether a change must reach the host: not when it leaves the known values as they are.
fn needs_write(e: &Entry, base: Option<&HeaderMap>) -> bool {
    if !e.set {
        return !e.vals.is_empty();
    }
    if e.had == Had::Absent {
        // Known absent when first changed (the map read since shows the same).
        return !e.vals.is_empty();
    }
    if let Had::Present(n) = e.had
        && n != e.vals.len()
    {
        // Known from the same map: a different number of values is a change (no scan).
        return true;
    }
    let unchanged = match base {
        Some(m) => values(m, &e.name).eq(e.vals.iter()),
        None => e.vals.is_empty() && e.had == Had::Absent,
    };
    !unchanged
}

/// Probe-table cost of writing one change by single calls.
fn single_cost(e: &Entry, replaced_once: &mut bool) -> u32 {
    let adds = |n: usize| cost::ADD.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
    let had = e.had.present();
    let n = e.vals.len();
    if !e.set {
        adds(n)
    } else if n == 0 {
        if had == Some(false) { 0 } else { cost::REMOVE }
    } else if had == Some(false) {
        adds(n)
    } else {
        let r = if std::mem::replace(replaced_once, true) {
            cost::REPLACE_MORE
        } else {
            cost::REPLACE_FIRST
        };
        r.saturating_add(adds(n.saturating_sub(1)))
    }
}

/// Applies the changes to `map`.
fn apply(map: &mut HeaderMap, overlay: &[Entry]) {
    for e in overlay {
        let name = e.name.as_str();
        let mut vs = e.vals.iter();
        if e.set && e.had == Had::Absent {
            // Known absent from this map when first changed: no scan for existing values.
            for v in vs {
                map.pairs.push((e.name.clone(), v.to_owned()));
            }
            continue;
        }
        if e.set {
            match vs.next() {
                Some(first) => map.set(name, first.to_owned()),
                None => remove(map, name),
            }
        }
        for v in vs {
            map.add(name, v.to_owned());
        }
    }
}

/// Removes every value of `name` from `map`, keeping the order of the rest.
fn remove(map: &mut HeaderMap, name: &str) {
    let mut from = 0;
    while let Some(i) = map
        .pairs
        .get(from..)
        .and_then(|rest| rest.iter().position(|(k, _)| name_eq(k, name)))
    {
        map.pairs.remove(from + i);
        from += i;
    }
}

fn values<'m>(map: &'m HeaderMap, name: &'m str) -> impl Iterator<Item = &'m str> + 'm {
    map.pairs
        .iter()
        .filter(move |(k, _)| name_eq(k, name))
        .map(|(_, v)| v.as_str())
}

impl<H: Host> Host for Phase<'_, H> {
    fn header_map(&mut self, kind: HeaderMapKind) -> Result<HeaderMap, HostError> {
        if kind != self.kind || self.through {
            return self.host.header_map(kind);
        }
        if matches!(self.base, Base::Moved) {
            // Read again after the hand-over (not planned): a fresh copy.
            let mut map = self.host.header_map(kind)?;
            apply(&mut map, self.overlay.live());
            return Ok(map);
        }
        if self.left && !self.hand_over {
            // (Not a stage the chain planned for: a whole-map read by a stage before the last,
            // after writes left out of the map. The host has them.)
            let mut map = self.host.header_map(kind)?;
            apply(&mut map, self.overlay.live());
            return Ok(map);
        }
        self.read_whole()?;
        if self.hand_over {
            // The last stage: the earlier stages' changes go to the host now (as stacked
            // filters would have written them), and the stage gets the map itself.
            self.write();
            let mut map = match std::mem::replace(&mut self.base, Base::Moved) {
                Base::Whole(m) => m,
                other => {
                    self.base = other;
                    HeaderMap::default()
                }
            };
            if !self.replaced {
                // (A replaced map already has the changes: `write` applied them.)
                apply(&mut map, self.overlay.live());
            }
            self.overlay.clear();
            self.replaced = false;
            self.through = true;
            return Ok(map);
        }
        let mut map = self.read_whole()?.clone();
        apply(&mut map, self.overlay.live());
        Ok(map)
    }

    fn header(&mut self, kind: HeaderMapKind, name: &str) -> Result<Option<String>, HostError> {
        if kind != self.kind || self.through {
            return self.host.header(kind, name);
        }
        let added = match self.overlay.find_mut(name) {
            Some(e) if e.set => return Ok(e.vals.first().map(str::to_owned)),
            Some(e) => e.vals.first().map(str::to_owned),
            None => None,
        };
        let base = self.base_value(name)?;
        Ok(base.or(added))
    }

    fn header_into(
        &mut self,
        kind: HeaderMapKind,
        name: &str,
        out: &mut String,
    ) -> Result<bool, HostError> {
        if kind != self.kind || self.through {
            return self.host.header_into(kind, name, out);
        }
        // As `header`, copying into `out` instead of allocating a value.
        fn copy(v: Option<&str>, out: &mut String) -> bool {
            match v {
                Some(v) => {
                    out.clear();
                    out.push_str(v);
                    true
                }
                None => false,
            }
        }
        if let Some(e) = self.overlay.find(name)
            && e.set
        {
            return Ok(copy(e.vals.first(), out));
        }
        if *self.plan == ReadPlan::Whole && matches!(self.base, Base::Singles(_)) {
            self.read_whole()?;
        }
        if let Base::Whole(m) = &self.base {
            if let Some(v) = m.get(name) {
                return Ok(copy(Some(v), out));
            }
        } else if let Some(v) = self.base_value(name)? {
            *out = v;
            return Ok(true);
        }
        Ok(copy(
            self.overlay.find(name).and_then(|e| e.vals.first()),
            out,
        ))
    }

    fn recycle_header_map(&mut self, map: HeaderMap) {
        self.host.recycle_header_map(map);
    }

    fn whole_map_writes(&self) -> bool {
        !self.left && self.host.whole_map_writes()
    }

    fn names_lower_case(&self) -> bool {
        // Changes a stage makes through the phase are lower-cased as they patch the map; a
        // map a stage set whole is that stage's.
        !self.replaced && self.host.names_lower_case()
    }

    fn set_header_map(&mut self, kind: HeaderMapKind, map: &HeaderMap) -> Result<(), HostError> {
        if kind != self.kind || self.through {
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
        if kind != self.kind || self.through {
            return self.host.replace_header(kind, name, value);
        }
        self.set_change(name, Some(value));
        Ok(())
    }

    fn add_header(
        &mut self,
        kind: HeaderMapKind,
        name: &str,
        value: &str,
    ) -> Result<(), HostError> {
        if kind != self.kind || self.through {
            return self.host.add_header(kind, name, value);
        }
        let leave = self.leave;
        if let Some((m, host, spare)) = self.through_map() {
            if !leave {
                append(m, spare, name, value);
            }
            let r = host.add_header(kind, name, value);
            self.left |= leave;
            return r;
        }
        if let Some(e) = self.overlay.find_mut(name) {
            e.vals.push(value);
            return Ok(());
        }
        let had = self.known(name);
        let base = match &self.base {
            Base::Whole(m) => Some(m),
            Base::Singles(_) | Base::Moved => None,
        };
        // Known absent, or known in full: the result is exactly the host's values plus this
        // one (a replace). Otherwise an add to what the host has.
        let set = matches!((had, base), (Had::Absent, _) | (Had::Present(_), Some(_)));
        let Some(e) = self.overlay.push(name, set, had) else {
            return Ok(());
        };
        if let (Had::Present(_), Some(m)) = (had, base) {
            for v in values(m, name) {
                e.vals.push(v);
            }
        }
        e.vals.push(value);
        Ok(())
    }

    fn remove_header(&mut self, kind: HeaderMapKind, name: &str) -> Result<(), HostError> {
        if kind != self.kind || self.through {
            return self.host.remove_header(kind, name);
        }
        self.set_change(name, None);
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

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::mock::MockHost;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// The last stage's whole-map read hands it the map with the earlier changes applied and
    /// writes those changes to the host then; the stage's own writes and reads then reach the
    /// host as it makes them (as its standalone filter's would), and the end of the phase
    /// writes nothing more.
    #[test]
    fn the_last_stage_works_on_the_host_after_the_hand_over() {
        let plan = ReadPlan::Whole;
        let mut h = MockHost::new().with_request(&[(":path", "/"), ("x-key", "k"), ("x-a", "0")]);
        let mut p = Phase::new(&mut h, HeaderMapKind::Request, &plan);
        // An earlier stage: one read (the whole map, as planned), a removal and a new header.
        assert_eq!(
            p.header(HeaderMapKind::Request, "x-key")
                .unwrap()
                .as_deref(),
            Some("k")
        );
        p.remove_header(HeaderMapKind::Request, "x-key").unwrap();
        p.replace_header(HeaderMapKind::Request, "x-id", "alice")
            .unwrap();
        p.last_stage();
        let map = p.header_map(HeaderMapKind::Request).unwrap();
        assert_eq!(map.get("x-key"), None);
        assert_eq!(map.get("x-id"), Some("alice"));
        assert_eq!(map.get("x-a"), Some("0"));
        // The earlier changes are on the host now, before the last stage writes anything.
        assert_eq!(p.host.request.get("x-key"), None);
        assert_eq!(p.host.request.get("x-id"), Some("alice"));
        let calls = p.host.host_calls;
        p.add_header(HeaderMapKind::Request, "x-a", "1").unwrap();
        p.replace_header(HeaderMapKind::Request, "x-b", "2")
            .unwrap();
        assert_eq!(
            p.host.host_calls,
            calls + 2,
            "issued as the stage makes them"
        );
        assert_eq!(
            p.header(HeaderMapKind::Request, "x-b").unwrap().as_deref(),
            Some("2")
        );
        let calls = p.host.host_calls;
        let _ = p.finish();
        assert_eq!(h.host_calls, calls, "nothing left to write at the end");
        let vals: Vec<&str> = h
            .request
            .pairs
            .iter()
            .filter(|(k, _)| k == "x-a")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(vals, ["0", "1"]);
        assert_eq!(h.request.get("x-b"), Some("2"));
        assert_eq!(h.request.get("x-id"), Some("alice"));
    }

    /// After the whole read, an earlier stage's changes reach the host as it makes them (as its
    /// standalone filter's would): a reply later in the phase leaves them made, as stacked
    /// filters would. Changes made before any read are pending, and a reply drops them.
    #[test]
    fn changes_after_the_read_are_made_and_pending_ones_dropped_on_discard() {
        let plan = ReadPlan::Whole;
        let mut h = MockHost::new().with_request(&[("x-key", "k"), ("x-a", "1")]);
        let mut p = Phase::new(&mut h, HeaderMapKind::Request, &plan);
        p.header(HeaderMapKind::Request, "x-key").unwrap();
        p.remove_header(HeaderMapKind::Request, "x-key").unwrap();
        p.replace_header(HeaderMapKind::Request, "x-id", "alice")
            .unwrap();
        assert_eq!(
            p.header(HeaderMapKind::Request, "x-id").unwrap().as_deref(),
            Some("alice"),
            "reads see the change"
        );
        p.last_stage();
        let _ = p.discard();
        assert_eq!(h.request.get("x-key"), None);
        assert_eq!(h.request.get("x-id"), Some("alice"));
        assert_eq!(h.host_calls, 3, "the read and the two writes");

        let mut h = MockHost::new().with_request(&[("x-key", "k")]);
        let before = h.request.clone();
        let mut p = Phase::new(&mut h, HeaderMapKind::Request, &plan);
        p.remove_header(HeaderMapKind::Request, "x-key").unwrap();
        p.replace_header(HeaderMapKind::Request, "x-id", "alice")
            .unwrap();
        let _ = p.discard();
        assert_eq!(h.request, before);
        assert_eq!(h.host_calls, 0);
    }

    /// Writes made after the read keep the phase's map equal to the host's, for one value or
    /// several values of a name.
    #[test]
    fn writes_after_the_read_keep_the_map_equal_to_the_host() {
        let plan = ReadPlan::Whole;
        let mut h = MockHost::new().with_request(&[
            ("x-one", "1"),
            ("x-two", "a"),
            ("x-gone", "g"),
            ("x-two", "b"),
            ("x-three", "3"),
            ("x-rm", "r1"),
            ("x-rm", "r2"),
        ]);
        let mut p = Phase::new(&mut h, HeaderMapKind::Request, &plan);
        p.header(HeaderMapKind::Request, "x-one").unwrap();
        p.replace_header(HeaderMapKind::Request, "X-One", "one")
            .unwrap();
        p.replace_header(HeaderMapKind::Request, "x-two", "c")
            .unwrap();
        p.remove_header(HeaderMapKind::Request, "x-gone").unwrap();
        p.remove_header(HeaderMapKind::Request, "x-rm").unwrap();
        p.add_header(HeaderMapKind::Request, "x-three", "4")
            .unwrap();
        p.replace_header(HeaderMapKind::Request, "x-new", "n")
            .unwrap();
        p.last_stage();
        let seen = p.header_map(HeaderMapKind::Request).unwrap();
        let _ = p.finish();
        let mut want = h.request.pairs.clone();
        let mut got = seen.pairs.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "the stage saw what the host has");
        assert_eq!(h.request.get("x-one"), Some("one"));
        assert_eq!(values(&h.request, "x-two").collect::<Vec<_>>(), ["c"]);
        assert_eq!(
            values(&h.request, "x-three").collect::<Vec<_>>(),
            ["3", "4"]
        );
        assert_eq!(h.request.get("x-gone"), None);
        assert_eq!(h.request.get("x-rm"), None);
        assert_eq!(h.request.get("x-new"), Some("n"));
    }

    /// A pair a write removes from the read map lends its buffers to the next pair a write
    /// appends (the auth stage's credential out, identity in): the map keeps its strings (the
    /// same buffers when they are large enough, as here), the host gets both calls, and the
    /// appended name is lower case.
    #[test]
    fn a_removed_pair_lends_its_buffers_to_the_next_append() {
        let plan = ReadPlan::Whole;
        let mut h = MockHost::new().with_request(&[
            (":path", "/"),
            ("x-credential", "a-rather-long-key-value"),
            ("x-after", "1"),
        ]);
        let mut p = Phase::new(&mut h, HeaderMapKind::Request, &plan);
        p.header(HeaderMapKind::Request, ":path").unwrap();
        let Base::Whole(m) = &p.base else {
            panic!("the whole map was read")
        };
        let lent = (m.pairs[1].0.as_ptr(), m.pairs[1].1.as_ptr());
        p.remove_header(HeaderMapKind::Request, "x-credential")
            .unwrap();
        p.replace_header(HeaderMapKind::Request, "X-Consumer", "mobile")
            .unwrap();
        let Base::Whole(m) = &p.base else {
            panic!("the map is still the phase's")
        };
        let last = m.pairs.last().unwrap();
        assert_eq!((last.0.as_str(), last.1.as_str()), ("x-consumer", "mobile"));
        assert_eq!((last.0.as_ptr(), last.1.as_ptr()), lent);
        assert!(p.spare.is_none());
        // A second append has no spare: it allocates, and is right too.
        p.replace_header(HeaderMapKind::Request, "x-more", "m")
            .unwrap();
        let _ = p.finish();
        assert_eq!(h.request.get("x-credential"), None);
        assert_eq!(h.request.get("x-consumer"), Some("mobile"));
        assert_eq!(h.request.get("x-more"), Some("m"));
        assert_eq!(h.request.get("x-after"), Some("1"));
    }

    /// Reads after writes that go straight through (a replace in place, a removal shifting the
    /// pairs, an append, an add of a second value) give the same answers as a scan of the map.
    #[test]
    fn a_read_of_the_name_just_written_matches_a_scan() {
        let plan = ReadPlan::Whole;
        let mut h = MockHost::new().with_request(&[
            (":path", "/"),
            ("x-credential", "k"),
            ("x-consumer", "spoofed"),
            ("x-after", "1"),
        ]);
        let mut p = Phase::new(&mut h, HeaderMapKind::Request, &plan);
        let mut out = String::new();
        let read = |p: &mut Phase<'_, MockHost>, name: &str, out: &mut String| {
            let found = p.header_into(HeaderMapKind::Request, name, out).unwrap();
            let Base::Whole(m) = &p.base else {
                panic!("the map is the phase's")
            };
            assert_eq!(found.then_some(out.as_str()), m.get(name), "{name}");
            found.then(|| out.clone())
        };
        assert_eq!(
            read(&mut p, "x-consumer", &mut out).as_deref(),
            Some("spoofed")
        );
        p.replace_header(HeaderMapKind::Request, "x-consumer", "mobile")
            .unwrap();
        assert_eq!(
            read(&mut p, "X-Consumer", &mut out).as_deref(),
            Some("mobile")
        );
        // A removal before it shifts the pairs.
        p.remove_header(HeaderMapKind::Request, "x-credential")
            .unwrap();
        assert_eq!(
            read(&mut p, "x-consumer", &mut out).as_deref(),
            Some("mobile")
        );
        p.replace_header(HeaderMapKind::Request, "x-new", "n")
            .unwrap();
        assert_eq!(read(&mut p, "x-new", &mut out).as_deref(), Some("n"));
        assert_eq!(read(&mut p, "x-after", &mut out).as_deref(), Some("1"));
        // A second value of that name: the first one is what a read finds.
        p.add_header(HeaderMapKind::Request, "x-new", "second")
            .unwrap();
        assert_eq!(read(&mut p, "x-new", &mut out).as_deref(), Some("n"));
        let _ = p.finish();
        assert_eq!(h.request.get("x-consumer"), Some("mobile"));
    }

    /// `header_into` gives what `header` gives (a change of this phase, the host's value, an
    /// add to an absent header, nothing), copied into the caller's buffer without replacing it.
    #[test]
    fn header_into_matches_header_and_reuses_the_buffer() {
        for plan in [
            ReadPlan::Whole,
            ReadPlan::One("x-a".into()),
            ReadPlan::Nothing,
        ] {
            let mut h = MockHost::new().with_request(&[("x-a", "host-a"), ("x-b", "host-b")]);
            let mut p = Phase::new(&mut h, HeaderMapKind::Request, &plan);
            p.replace_header(HeaderMapKind::Request, "x-b", "set-b")
                .unwrap();
            p.add_header(HeaderMapKind::Request, "x-c", "added-c")
                .unwrap();
            p.add_header(HeaderMapKind::Request, "x-a", "added-a")
                .unwrap();
            let mut out = String::with_capacity(64);
            let buffer = out.as_ptr();
            for name in ["x-a", "X-B", "x-c", "x-none"] {
                let want = p.header(HeaderMapKind::Request, name).unwrap();
                let found = p
                    .header_into(HeaderMapKind::Request, name, &mut out)
                    .unwrap();
                assert_eq!(found, want.is_some(), "{plan:?} {name}");
                if let Some(want) = want {
                    assert_eq!(out, want, "{plan:?} {name}");
                }
            }
            if plan == ReadPlan::Whole {
                assert_eq!(out.as_ptr(), buffer, "copied into the buffer it was given");
            }
        }
    }

    /// A phase on `overlay`'s buffers writes exactly its own changes (nothing of the previous
    /// phase's names or values leaks), and what the overlay keeps afterwards is bounded.
    #[test]
    fn reused_overlay_writes_only_its_own_changes_and_stays_bounded() {
        let plan = ReadPlan::Whole;
        let mut overlay = Overlay::default();
        let big = "v".repeat(Overlay::KEEP_BYTES + 1);
        // Phase 1: many changes, one value over the size bound, several values per name.
        let mut h = MockHost::new().with_request(&[(":path", "/"), ("old", "1")]);
        let mut p = Phase::with_overlay(&mut h, HeaderMapKind::Request, &plan, overlay);
        for i in 0..Overlay::KEEP + 4 {
            p.replace_header(HeaderMapKind::Request, &format!("X-H{i}"), "long-value-one")
                .unwrap();
        }
        p.replace_header(HeaderMapKind::Request, "x-big", &big)
            .unwrap();
        for i in 0..Overlay::KEEP + 2 {
            p.add_header(HeaderMapKind::Request, "x-many", &i.to_string())
                .unwrap();
        }
        p.remove_header(HeaderMapKind::Request, "old").unwrap();
        overlay = p.finish();
        assert_eq!(h.request.get("x-h0"), Some("long-value-one"));
        assert_eq!(h.request.get("x-big"), Some(big.as_str()));
        assert_eq!(h.request.get("old"), None);
        assert_eq!(overlay.len, 0);
        assert!(overlay.entries.len() <= Overlay::KEEP);
        for e in &overlay.entries {
            assert!(e.vals.items.len() <= Overlay::KEEP);
            assert!(e.name.capacity() <= Overlay::KEEP_BYTES);
            assert!(
                e.vals
                    .items
                    .iter()
                    .all(|v| v.capacity() <= Overlay::KEEP_BYTES)
            );
        }
        // Phase 2 on the same buffers: shorter names and values, one add to a present header.
        let mut h = MockHost::new().with_request(&[(":path", "/"), ("x-a", "0")]);
        let before = h.request.clone();
        let mut p = Phase::with_overlay(&mut h, HeaderMapKind::Request, &plan, overlay);
        assert_eq!(p.header(HeaderMapKind::Request, "x-h0").unwrap(), None);
        p.add_header(HeaderMapKind::Request, "x-a", "1").unwrap();
        p.replace_header(HeaderMapKind::Request, "y", "z").unwrap();
        assert_eq!(
            p.header(HeaderMapKind::Request, "y").unwrap().as_deref(),
            Some("z")
        );
        let _ = p.finish();
        let mut want = before;
        want.add("x-a", "1".into());
        want.add("y", "z".into());
        assert_eq!(h.request, want);
    }

    /// A stage whose writes no later stage observes: they reach the host as made and the
    /// phase's map stays as read; from then on the phase refuses whole-map writes, answers a
    /// whole-map read before the hand-over from the host, and hands the last stage the map as
    /// read (the headers it observes unchanged). A later stage's writes are copied as before.
    #[test]
    fn writes_left_out_of_the_map_reach_the_host_only() {
        let plan = ReadPlan::Whole;
        let mut h = MockHost::new().with_request(&[(":path", "/"), ("x-key", "k"), ("x-a", "0")]);
        let mut p = Phase::new(&mut h, HeaderMapKind::Request, &plan);
        p.leave_out_of_map(true);
        assert!(p.whole_map_writes());
        p.header(HeaderMapKind::Request, "x-key").unwrap();
        p.remove_header(HeaderMapKind::Request, "x-key").unwrap();
        p.replace_header(HeaderMapKind::Request, "x-id", "alice")
            .unwrap();
        p.add_header(HeaderMapKind::Request, "x-more", "1").unwrap();
        assert_eq!(p.host.request.get("x-key"), None, "made on the host");
        assert_eq!(p.host.request.get("x-id"), Some("alice"));
        assert_eq!(p.host.request.get("x-more"), Some("1"));
        assert!(!p.whole_map_writes(), "a whole map would undo them");
        let whole = p.header_map(HeaderMapKind::Request).unwrap();
        assert_eq!(whole.get("x-key"), None, "read from the host");
        assert_eq!(whole.get("x-id"), Some("alice"));
        // A later stage: its change is copied into the map as before.
        p.leave_out_of_map(false);
        p.replace_header(HeaderMapKind::Request, "x-a", "1")
            .unwrap();
        p.last_stage();
        let map = p.header_map(HeaderMapKind::Request).unwrap();
        assert_eq!(map.get("x-a"), Some("1"));
        assert_eq!(map.get(":path"), Some("/"));
        assert_eq!(map.get("x-id"), None, "left out");
        let _ = p.finish();
        assert_eq!(h.request.get("x-a"), Some("1"));
        assert_eq!(h.request.get("x-id"), Some("alice"));
        assert_eq!(h.request.get("x-key"), None);
    }
}

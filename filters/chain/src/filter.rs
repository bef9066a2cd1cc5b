//! The compiled chain and its per-request run: each stage's own compiled filter, run in order
//! over one [`Phase`] per phase.

use std::cell::RefCell;
use std::rc::Rc;

use filter_core::{Decision, HeaderMapKind, Host, name_eq};

use crate::ConfigError;
use crate::config::{ChainConfig, Stage};
use crate::phase::{Overlay, Phase, ReadPlan};

/// One compiled stage: exactly its standalone filter's compiled form. (Few per chain, built
/// once: the size difference between variants does not matter.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum CompiledStage {
    /// The auth filter.
    Auth(auth::Compiled),
    /// The rate-limit filter (this worker's rules and leases).
    RateLimit(ratelimit::Compiled),
    /// The headers filter.
    Headers(headers::Compiled),
}

/// The compiled chain; build it with [`compile`].
#[derive(Debug)]
pub struct Compiled {
    stages: Vec<CompiledStage>,
    /// How the request phase reads the request headers: the union of the stages' reads.
    request_reads: ReadPlan,
    /// How the response phase reads the response headers.
    response_reads: ReadPlan,
    /// Whether any stage works on responses (otherwise the response phase returns at once).
    response_work: bool,
    /// Per stage: the earlier auth stage whose identity is exactly the one header this
    /// (rate-limit) stage reads, so the stage is given the consumer instead of reading it.
    consumer_from: Vec<Option<usize>>,
    /// Per stage: whether its request-header writes may stay out of the phase's copy of the map
    /// (see [`leave_out_of_map`]).
    leave_out: Vec<bool>,
    /// This worker's overlay buffers, lent to each phase in turn (phases never overlap on a
    /// worker), so a request's header changes reuse the previous request's strings.
    overlay: RefCell<Overlay>,
}

/// Per-request state of one stage.
#[derive(Debug)]
enum StageStream {
    Auth(auth::Stream),
    RateLimit(ratelimit::Stream),
    Headers(headers::Stream),
}

/// Stages whose stream state is kept inline (no allocation per request); more go to a vector.
const INLINE_STAGES: usize = 4;

/// The stages' stream states, in order: the first [`INLINE_STAGES`] inline, the rest in `more`.
#[derive(Debug, Default)]
struct StageStreams {
    inline: [Option<StageStream>; INLINE_STAGES],
    more: Vec<StageStream>,
}

impl StageStreams {
    fn clear(&mut self) {
        self.inline = Default::default();
        self.more.clear();
    }

    /// Stage `i`'s state, fresh (stages are run in order: `i` is the number run so far), built
    /// in its slot rather than moved there.
    fn fresh(&mut self, i: usize, fresh: fn() -> StageStream) -> Option<&mut StageStream> {
        match self.inline.get_mut(i) {
            Some(slot) => Some(slot.insert(fresh())),
            None => {
                self.more.push(fresh());
                self.more.last_mut()
            }
        }
    }

    fn get(&self, i: usize) -> Option<&StageStream> {
        match self.inline.get(i) {
            Some(slot) => slot.as_ref(),
            None => self.more.get(i.checked_sub(INLINE_STAGES)?),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &StageStream> {
        self.inline.iter().flatten().chain(self.more.iter())
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut StageStream> {
        self.inline.iter_mut().flatten().chain(self.more.iter_mut())
    }
}

/// Per-request state: each stage's own stream state, and how many stages ran on the request.
#[derive(Debug, Default)]
pub struct Stream {
    stages: StageStreams,
    ran: usize,
}

impl Stream {
    /// Who the request is from, when an auth stage authenticated it.
    pub fn identity(&self) -> Option<&auth::Identity> {
        self.stages.iter().find_map(|s| match s {
            StageStream::Auth(a) => a.identity(),
            _ => None,
        })
    }

    /// How many stages ran on the request (all of them unless one answered locally).
    pub fn ran(&self) -> usize {
        self.ran
    }
}

/// Validates and compiles every stage with its filter's own `compile`, once, at configure time.
pub fn compile(config: &ChainConfig) -> Result<Compiled, ConfigError> {
    if config.stages.is_empty() {
        return Err(ConfigError::Empty);
    }
    let mut stages = Vec::with_capacity(config.stages.len());
    for (index, stage) in config.stages.iter().enumerate() {
        let err = |error: String| ConfigError::Stage {
            index,
            kind: stage.kind(),
            error,
        };
        stages.push(match stage {
            Stage::Auth(c) => {
                CompiledStage::Auth(auth::compile(c).map_err(|e| err(e.to_string()))?)
            }
            Stage::RateLimit(c) => {
                if c.global.is_some() {
                    // The chain has no way to wait for the rate limit service's answer.
                    return Err(err(
                        "global: global limits need the standalone ratelimit filter \
                         (root id ratelimit), not a chain stage"
                            .into(),
                    ));
                }
                CompiledStage::RateLimit(ratelimit::compile(c).map_err(|e| err(e.to_string()))?)
            }
            Stage::Headers(c) => {
                CompiledStage::Headers(headers::compile(c).map_err(|e| err(e.to_string()))?)
            }
        });
    }
    // Headers an earlier stage always writes on the way to a later one: the auth stage's
    // identity header (replaced, or removed, on every path that continues).
    let written: Vec<Vec<String>> = config
        .stages
        .iter()
        .map(|s| match s {
            Stage::Auth(c) => vec![c.identity_header.to_ascii_lowercase()],
            _ => Vec::new(),
        })
        .collect();
    let request_reads = ReadPlan::union(stages.iter().zip(&written).map(|(s, w)| {
        let need = match s {
            CompiledStage::Auth(f) => f.request_reads(),
            CompiledStage::RateLimit(f) => f.request_reads(),
            CompiledStage::Headers(f) => f.request_reads(),
        };
        (need, w.as_slice())
    }));
    let response_reads = ReadPlan::union(stages.iter().map(|s| {
        let need = match s {
            CompiledStage::Headers(f) => f.response_reads(),
            CompiledStage::Auth(_) | CompiledStage::RateLimit(_) => Some(&[][..]),
        };
        (need, &[][..])
    }));
    let response_work = stages.iter().any(|s| match s {
        CompiledStage::Headers(f) => f.has_response_work(),
        CompiledStage::RateLimit(f) => f.has_response_work(),
        CompiledStage::Auth(_) => false,
    });
    // A rate-limit stage whose one read is the identity header of the nearest earlier stage
    // that writes request headers, an auth stage, is given that stage's consumer: the auth
    // stage replaces the header with it, or removes it, on every path that continues.
    let consumer_from = (0..stages.len())
        .map(|i| {
            let Some(CompiledStage::RateLimit(f)) = stages.get(i) else {
                return None;
            };
            let [name] = f.request_reads()? else {
                return None;
            };
            let writer = (0..i)
                .rev()
                .find(|&j| !matches!(config.stages.get(j), Some(Stage::RateLimit(_))))?;
            match config.stages.get(writer) {
                Some(Stage::Auth(c)) if c.identity_header.eq_ignore_ascii_case(name) => {
                    Some(writer)
                }
                _ => None,
            }
        })
        .collect::<Vec<_>>();
    let leave_out = leave_out_of_map(&stages, &consumer_from);
    Ok(Compiled {
        stages,
        request_reads,
        response_reads,
        response_work,
        consumer_from,
        leave_out,
        overlay: RefCell::new(Overlay::default()),
    })
}

/// Per stage, whether its writes to the request headers may reach Envoy without being copied
/// into the phase's map ([`Phase::leave_out_of_map`]): only an auth stage, not the last, that
/// writes each of its headers at most once per request (`auth::Compiled::request_writes`), and
/// whose headers no later stage reads or writes: a headers stage's reads and writes are planned
/// by its filter (`headers::Compiled::request_touches`; `append` and `rename` touch any); a
/// rate-limit stage reads its keys' and conditions' headers (none when it is given the
/// consumer) and writes none on the request; an auth stage's are not enumerated as a reader.
/// The bench's chain: the key removal and `x-consumer` stay out of the map the headers job is
/// handed, as that job never names them.
fn leave_out_of_map(stages: &[CompiledStage], consumer_from: &[Option<usize>]) -> Vec<bool> {
    let touches = |j: usize| -> Option<&[String]> {
        match stages.get(j)? {
            CompiledStage::Auth(_) => None,
            CompiledStage::RateLimit(_) if consumer_from.get(j).is_some_and(Option::is_some) => {
                Some(&[])
            }
            CompiledStage::RateLimit(f) => f.request_reads(),
            CompiledStage::Headers(f) => f.request_touches(),
        }
    };
    (0..stages.len())
        .map(|i| {
            let Some(CompiledStage::Auth(f)) = stages.get(i) else {
                return false;
            };
            let Some(writes) = f.request_writes() else {
                return false;
            };
            i + 1 < stages.len()
                && (i + 1..stages.len()).all(|j| {
                    touches(j)
                        .is_some_and(|t| !t.iter().any(|n| writes.iter().any(|w| name_eq(w, n))))
                })
        })
        .collect()
}

impl Compiled {
    /// Per stage, whether its writes stay out of the phase's map (tests).
    #[cfg(test)]
    pub(crate) fn leave_out(&self) -> &[bool] {
        &self.leave_out
    }

    /// The compiled stages, in order (the glue defines their stats and runs their ticks).
    pub fn stages(&self) -> &[CompiledStage] {
        &self.stages
    }

    /// Per stage, the auth stage whose consumer it is given instead of a read (tests).
    #[cfg(test)]
    pub(crate) fn consumer_from(&self) -> &[Option<usize>] {
        &self.consumer_from
    }

    /// How the request phase reads the request headers (planned at configure time).
    pub fn request_reads(&self) -> &ReadPlan {
        &self.request_reads
    }

    /// How the response phase reads the response headers (planned at configure time).
    pub fn response_reads(&self) -> &ReadPlan {
        &self.response_reads
    }

    /// Request phase: runs the stages in order over one read of the request headers; the first
    /// local reply ends the chain (request-header writes still pending are dropped: nothing goes
    /// upstream); otherwise every change is written once: the earlier stages' when the last
    /// stage takes the map (it then writes its own as its standalone filter does), or all at
    /// the end.
    pub fn on_request_headers<H: Host>(&self, host: &mut H, stream: &mut Stream) -> Decision {
        if stream.ran > 0 {
            // (A stream used before; a new one has nothing to clear.)
            stream.stages.clear();
            stream.ran = 0;
        }
        let mut phase = Phase::with_overlay(
            host,
            HeaderMapKind::Request,
            &self.request_reads,
            self.take_overlay(),
        );
        let last = self.stages.len().saturating_sub(1);
        for (i, stage) in self.stages.iter().enumerate() {
            if i == last {
                phase.last_stage();
            }
            phase.leave_out_of_map(self.leave_out.get(i).copied().unwrap_or(false));
            let fresh: fn() -> StageStream = match stage {
                CompiledStage::Auth(_) => || StageStream::Auth(auth::Stream::default()),
                CompiledStage::RateLimit(_) => {
                    || StageStream::RateLimit(ratelimit::Stream::default())
                }
                CompiledStage::Headers(_) => || StageStream::Headers(headers::Stream::default()),
            };
            // The consumer an earlier auth stage wrote, for a rate-limit stage that reads it.
            let given: Option<Option<Rc<str>>> = match self.consumer_from.get(i) {
                Some(&Some(j)) => match stream.stages.get(j) {
                    Some(StageStream::Auth(a)) => Some(a.identity().map(|id| id.consumer.clone())),
                    _ => None,
                },
                _ => None,
            };
            let d = match (stage, stream.stages.fresh(i, fresh)) {
                (CompiledStage::Auth(f), Some(StageStream::Auth(s))) => {
                    f.on_request_headers(&mut phase, s)
                }
                (CompiledStage::RateLimit(f), Some(StageStream::RateLimit(s))) => match given {
                    Some(consumer) => {
                        f.on_request_headers_knowing(&mut phase, s, consumer.as_deref())
                    }
                    None => f.on_request_headers(&mut phase, s),
                },
                (CompiledStage::Headers(f), Some(StageStream::Headers(s))) => {
                    f.on_request_headers(&mut phase, s)
                }
                // (`fresh` made the stage's own kind.)
                _ => Decision::Continue,
            };
            stream.ran += 1;
            match d {
                Decision::Continue => {}
                // No stage pauses today; a pause or a reply ends this pass.
                other => {
                    self.put_overlay(phase.discard());
                    return other;
                }
            }
        }
        self.put_overlay(phase.finish());
        Decision::Continue
    }

    /// The worker's overlay buffers (fresh ones when lent out: never on one worker's thread).
    fn take_overlay(&self) -> Overlay {
        self.overlay
            .try_borrow_mut()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default()
    }

    fn put_overlay(&self, overlay: Overlay) {
        if let Ok(mut o) = self.overlay.try_borrow_mut() {
            *o = overlay;
        }
    }

    /// Response phase: the response-phase work of the stages that ran on the request (all of
    /// them, or up to and including the one that answered locally), in order, over one read
    /// of the response headers and one write.
    pub fn on_response_headers<H: Host>(&self, host: &mut H, stream: &mut Stream) -> Decision {
        if !self.response_work {
            return Decision::Continue;
        }
        let mut phase = Phase::with_overlay(
            host,
            HeaderMapKind::Response,
            &self.response_reads,
            self.take_overlay(),
        );
        let mut decision = Decision::Continue;
        let last = stream.ran.saturating_sub(1);
        for (i, (stage, s)) in self.stages.iter().zip(stream.stages.iter_mut()).enumerate() {
            if i == last {
                phase.last_stage();
            }
            let d = match (stage, s) {
                (CompiledStage::RateLimit(f), StageStream::RateLimit(s)) => {
                    if f.has_response_work() {
                        f.on_response_headers(&mut phase, s)
                    } else {
                        Decision::Continue
                    }
                }
                (CompiledStage::Headers(f), StageStream::Headers(s)) => {
                    f.on_response_headers(&mut phase, s)
                }
                _ => Decision::Continue,
            };
            if d != Decision::Continue {
                decision = d;
                break;
            }
        }
        self.put_overlay(phase.finish());
        decision
    }
}

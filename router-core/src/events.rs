//! Events: what happened to heads, models and decisions, delivered to any number of subscribers.
//!
//! Subscribe with a callback ([`EventBus::on_event`]) or a bounded channel
//! ([`EventBus::subscribe`]). Delivery never blocks the router: a full channel drops the event
//! and counts the drop ([`EventStream::dropped`]); a panicking callback is caught. Decision
//! events are built only while someone subscribed to them, so they cost nothing otherwise.

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::breaker::TripReason;
use crate::decision::DecisionRecord;
use crate::endpoint::HeadStatus;
use crate::model::ModelStatus;

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An endpoint (head) was registered.
    HeadRegistered {
        /// The endpoint.
        endpoint_id: String,
        /// Its model.
        model_id: String,
        /// Its URL.
        url: String,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// An endpoint was deregistered.
    HeadDeregistered {
        /// The endpoint.
        endpoint_id: String,
        /// Its model.
        model_id: String,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A head's reported status changed.
    HeadStatusChanged {
        /// The endpoint.
        endpoint_id: String,
        /// Old status.
        from: HeadStatus,
        /// New status.
        to: HeadStatus,
        /// Load it reported with the change.
        current_load: Option<u32>,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A head missed its heartbeat deadline and gets no traffic until it is heard from again.
    HeadExpired {
        /// The endpoint.
        endpoint_id: String,
        /// When it was last heard from, Unix ms.
        last_seen_ms: u64,
        /// When the expiry was noticed, Unix ms.
        at_ms: u64,
    },
    /// An expired head was heard from again and takes traffic again.
    HeadRevived {
        /// The endpoint.
        endpoint_id: String,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A model was registered.
    ModelRegistered {
        /// The model.
        model_id: String,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A model (and its endpoints) was deregistered.
    ModelDeregistered {
        /// The model.
        model_id: String,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A model's lifecycle status changed.
    ModelStatusChanged {
        /// The model.
        model_id: String,
        /// Old status.
        from: ModelStatus,
        /// New status.
        to: ModelStatus,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A breaker opened: the endpoint gets no traffic for `open_for_ms`.
    BreakerOpened {
        /// The endpoint.
        endpoint_id: String,
        /// Why.
        reason: TripReason,
        /// For how long, ms.
        open_for_ms: u64,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A breaker admits probes.
    BreakerHalfOpen {
        /// The endpoint.
        endpoint_id: String,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A breaker closed: normal traffic again.
    BreakerClosed {
        /// The endpoint.
        endpoint_id: String,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// An endpoint was ejected for consecutive failures (its breaker opened for that reason).
    EndpointEjected {
        /// The endpoint.
        endpoint_id: String,
        /// Failures in a row.
        consecutive_failures: u32,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// An ejected endpoint's breaker closed again.
    EndpointRestored {
        /// The endpoint.
        endpoint_id: String,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A 429 made the endpoint unroutable until `until_ms`.
    EndpointCoolingDown {
        /// The endpoint.
        endpoint_id: String,
        /// Until when, Unix ms.
        until_ms: u64,
    },
    /// The state store lost its backend: decisions continue from local state, writes queue.
    StoreDegraded {
        /// Why (the backend's error).
        reason: String,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// The state store reconnected; queued writes are being replayed.
    StoreRecovered {
        /// When, Unix ms.
        at_ms: u64,
    },
    /// The status computed from health scores changed.
    HealthChanged {
        /// The endpoint.
        endpoint_id: String,
        /// Old status.
        from: HeadStatus,
        /// New status.
        to: HeadStatus,
        /// The score that moved it.
        score: f64,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// Spend of a budget window crossed one of its alert shares.
    BudgetThresholdCrossed {
        /// `workspace`, `model` or `provider`.
        scope: crate::budget::BudgetScope,
        /// The workspace, model or provider.
        id: String,
        /// The window.
        window: crate::usage::BudgetWindow,
        /// The share crossed (e.g. 0.8).
        threshold: f64,
        /// Spent so far.
        spent: f64,
        /// The limit.
        limit: f64,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// Spend of a budget window reached its limit (in every mode: in `shadow` this is the
    /// only effect).
    BudgetExceeded {
        /// `workspace`, `model` or `provider`.
        scope: crate::budget::BudgetScope,
        /// The workspace, model or provider.
        id: String,
        /// The window.
        window: crate::usage::BudgetWindow,
        /// Spent so far.
        spent: f64,
        /// The limit.
        limit: f64,
        /// The budget's mode.
        mode: crate::budget::BudgetMode,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A rate limit turned a request away.
    RateLimited {
        /// The limit (`user:bob:rpm`, ...).
        key: String,
        /// When the request would be admitted, ms from now.
        retry_after_ms: u64,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// An experiment named its winner.
    ExperimentConcluded {
        /// The experiment.
        experiment_id: String,
        /// The winning variant.
        winner: String,
        /// Why it won (test and p-value).
        verdict: String,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A configuration change was accepted: version `version` now serves.
    PolicyChanged {
        /// The new version.
        version: u64,
        /// The caller's comment or a summary of the change.
        comment: String,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A policy document was rejected; the previous configuration keeps serving.
    PolicyRejected {
        /// Where it came from (a file path, or the caller's comment).
        source: String,
        /// Every problem, each with its path in the document.
        problems: Vec<crate::error::Problem>,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// Adaptive choice moved a model's share of a context's decisions, over the last share
    /// window, by at least the threshold since the share last reported.
    AdaptiveShareChanged {
        /// The learning context (`agent=support,request_type=chat`).
        context: String,
        /// The model.
        model_id: String,
        /// Its share last reported.
        from: f64,
        /// Its share over the window just closed.
        to: f64,
        /// Decisions in that window.
        window: u64,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A model's predicted in-flight passed `prediction.spillover_share` of its capacity: new
    /// requests that have other candidate models go to those (see [`crate::predict`]).
    SpilloverStarted {
        /// The model.
        model_id: String,
        /// Its in-flight now (own and reported).
        current_in_flight: f64,
        /// Its predicted in-flight a horizon ahead.
        predicted_in_flight: f64,
        /// The sum of its serving endpoints' capacities.
        capacity: u64,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A spilling model's predicted in-flight fell under `prediction.release_share` of its
    /// capacity: it takes new requests again.
    SpilloverStopped {
        /// The model.
        model_id: String,
        /// Its in-flight now (own and reported).
        current_in_flight: f64,
        /// Its predicted in-flight a horizon ahead.
        predicted_in_flight: f64,
        /// The sum of its serving endpoints' capacities.
        capacity: u64,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A decision was made.
    Decision(DecisionRecord),
}

impl Event {
    /// The event's type name, as serialised (`head_registered`, `decision`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::HeadRegistered { .. } => "head_registered",
            Event::HeadDeregistered { .. } => "head_deregistered",
            Event::HeadStatusChanged { .. } => "head_status_changed",
            Event::HeadExpired { .. } => "head_expired",
            Event::HeadRevived { .. } => "head_revived",
            Event::ModelRegistered { .. } => "model_registered",
            Event::ModelDeregistered { .. } => "model_deregistered",
            Event::ModelStatusChanged { .. } => "model_status_changed",
            Event::BreakerOpened { .. } => "breaker_opened",
            Event::BreakerHalfOpen { .. } => "breaker_half_open",
            Event::BreakerClosed { .. } => "breaker_closed",
            Event::EndpointEjected { .. } => "endpoint_ejected",
            Event::EndpointRestored { .. } => "endpoint_restored",
            Event::EndpointCoolingDown { .. } => "endpoint_cooling_down",
            Event::HealthChanged { .. } => "health_changed",
            Event::StoreDegraded { .. } => "store_degraded",
            Event::StoreRecovered { .. } => "store_recovered",
            Event::BudgetThresholdCrossed { .. } => "budget_threshold_crossed",
            Event::BudgetExceeded { .. } => "budget_exceeded",
            Event::RateLimited { .. } => "rate_limited",
            Event::ExperimentConcluded { .. } => "experiment_concluded",
            Event::PolicyChanged { .. } => "policy_changed",
            Event::PolicyRejected { .. } => "policy_rejected",
            Event::AdaptiveShareChanged { .. } => "adaptive_share_changed",
            Event::SpilloverStarted { .. } => "spillover_started",
            Event::SpilloverStopped { .. } => "spillover_stopped",
            Event::Decision(_) => "decision",
        }
    }
}

/// Handle of a subscription, for [`EventBus::unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

type Callback = Arc<dyn Fn(&Event) + Send + Sync>;

#[derive(Clone)]
enum Sink {
    Callback(Callback),
    Channel(SyncSender<Event>, Arc<AtomicU64>),
}

#[derive(Clone)]
struct Subscriber {
    id: u64,
    decisions: bool,
    sink: Sink,
}

/// The router's event fan-out.
pub struct EventBus {
    subscribers: ArcSwap<Vec<Subscriber>>,
    write: Mutex<()>,
    next_id: AtomicU64,
    wants_decisions: AtomicBool,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("subscribers", &self.subscribers.load().len())
            .finish()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            subscribers: ArcSwap::from_pointee(Vec::new()),
            write: Mutex::new(()),
            next_id: AtomicU64::new(1),
            wants_decisions: AtomicBool::new(false),
        }
    }
}

impl EventBus {
    fn add(&self, decisions: bool, sink: Sink) -> SubscriptionId {
        let _w = self.write.lock();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut v = (**self.subscribers.load()).clone();
        v.push(Subscriber { id, decisions, sink });
        self.wants_decisions
            .store(v.iter().any(|s| s.decisions), Ordering::Release);
        self.subscribers.store(Arc::new(v));
        SubscriptionId(id)
    }

    /// Call `f` for every event; with `decisions`, for every decision too. `f` runs on the
    /// thread that caused the event: keep it short.
    pub fn on_event(&self, decisions: bool, f: impl Fn(&Event) + Send + Sync + 'static) -> SubscriptionId {
        self.add(decisions, Sink::Callback(Arc::new(f)))
    }

    /// A bounded stream of events (`capacity` ≥ 1); with `decisions`, decisions too. Dropping
    /// the stream unsubscribes it.
    pub fn subscribe(self: &Arc<Self>, capacity: usize, decisions: bool) -> EventStream {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let id = self.add(decisions, Sink::Channel(tx, dropped.clone()));
        EventStream {
            rx,
            dropped,
            id,
            bus: Arc::downgrade(self),
        }
    }

    /// Stop a subscription. Unknown ids are ignored.
    pub fn unsubscribe(&self, id: SubscriptionId) {
        let _w = self.write.lock();
        let mut v = (**self.subscribers.load()).clone();
        v.retain(|s| s.id != id.0);
        self.wants_decisions
            .store(v.iter().any(|s| s.decisions), Ordering::Release);
        self.subscribers.store(Arc::new(v));
    }

    /// Whether anyone wants decision events.
    #[inline]
    pub(crate) fn wants_decisions(&self) -> bool {
        self.wants_decisions.load(Ordering::Relaxed)
    }

    /// Deliver an event to every interested subscriber.
    pub(crate) fn emit(&self, event: &Event) {
        let subs = self.subscribers.load();
        let is_decision = matches!(event, Event::Decision(_));
        for s in subs.iter() {
            if is_decision && !s.decisions {
                continue;
            }
            match &s.sink {
                Sink::Callback(f) => {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(event)));
                }
                Sink::Channel(tx, dropped) => match tx.try_send(event.clone()) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(TrySendError::Disconnected(_)) => {}
                },
            }
        }
    }
}

/// A subscription's receiving end.
#[derive(Debug)]
pub struct EventStream {
    rx: Receiver<Event>,
    dropped: Arc<AtomicU64>,
    id: SubscriptionId,
    bus: Weak<EventBus>,
}

impl EventStream {
    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Every event waiting now.
    pub fn drain(&self) -> Vec<Event> {
        std::iter::from_fn(|| self.try_recv()).collect()
    }

    /// Events dropped because the stream was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The subscription's id.
    pub fn id(&self) -> SubscriptionId {
        self.id
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.unsubscribe(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64) -> Event {
        Event::ModelRegistered {
            model_id: format!("m{i}"),
            at_ms: i,
        }
    }

    #[test]
    fn full_streams_drop_and_count_and_callbacks_survive_panics() {
        let bus = Arc::new(EventBus::default());
        let s = bus.subscribe(2, false);
        let seen = Arc::new(AtomicU64::new(0));
        let seen2 = seen.clone();
        bus.on_event(false, move |_| {
            seen2.fetch_add(1, Ordering::Relaxed);
            panic!("subscriber bug");
        });
        for i in 0..5 {
            bus.emit(&ev(i));
        }
        assert_eq!(s.drain().len(), 2);
        assert_eq!(s.dropped(), 3);
        assert_eq!(seen.load(Ordering::Relaxed), 5);
        assert!(!bus.wants_decisions());
        let d = bus.subscribe(1, true);
        assert!(bus.wants_decisions());
        drop(d);
        assert!(!bus.wants_decisions());
        drop(s);
        assert_eq!(bus.subscribers.load().len(), 1);
    }
}

//! One core subscription per topic per connection, fanned out in this process.
//!
//! Observers of one run in one process (a server streaming a run to a thousand clients) share
//! one NATS subscription: the server sends each wake-up to the process once, not once per
//! observer, and it is copied here into each observer's bounded buffer (a reference count,
//! not the bytes).
//!
//! An append in this process hands its wake-up frame to the local readers of its topic itself,
//! once the stream has acknowledged the batch, and publishes it for other processes with this
//! connection's origin in a header; the server's echo of that publish is skipped here. A local
//! observer so hears of an append without a second trip through the server. Nothing is missed
//! by a reader that joins meanwhile: the batch was stored before the local hand-off, and a
//! reader reads the log after it joined (see `durable_core`'s observer).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use durable_core::Delivery;
use futures::task::AtomicWaker;
use futures::StreamExt as _;
use tokio::sync::{oneshot, watch};

/// The header naming the connection that published a wake-up frame.
pub(crate) const ORIGIN: &str = "Durable-Origin";

/// Deliveries buffered per reader before it is `Lagged`.
const BUFFER: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The subscriptions of one connection, by subject.
pub(crate) struct Fanout {
    /// This connection's origin header value.
    origin: String,
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
}

/// The readers of one subject in this process, fed by one NATS subscription.
struct Hub {
    members: Mutex<Members>,
    /// `None` until the subscription is live on the server; then whether it is.
    ready: watch::Sender<Option<Result<(), String>>>,
    /// Stops the feeding task (which then unsubscribes).
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

#[derive(Default)]
struct Members {
    readers: Vec<Arc<Ring>>,
    /// The subscription ended: new readers need a new hub.
    closed: bool,
}

impl Hub {
    fn each(&self, f: impl Fn(&Ring)) {
        for r in &lock(&self.members).readers {
            f(r);
        }
    }
}

/// What [`Fanout::join`] made of a reader.
pub(crate) enum Joined {
    /// The first reader of its subject: subscribe, then [`Creating::live`].
    Create(Creating),
    /// A reader of a subscription made (or being made) by another: [`Reader::live`].
    Existing,
}

impl Fanout {
    pub(crate) fn new() -> Self {
        Self {
            origin: uuid::Uuid::new_v4().simple().to_string(),
            hubs: Mutex::default(),
        }
    }

    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// Add a reader of `subject`: to the subject's hub, or to a new one its caller subscribes.
    pub(crate) fn join(self: &Arc<Self>, subject: &str) -> (Reader, Joined) {
        let ring = Arc::new(Ring::default());
        let mut hubs = lock(&self.hubs);
        if let Some(hub) = hubs.get(subject) {
            let mut m = lock(&hub.members);
            if !m.closed {
                m.readers.push(ring.clone());
                drop(m);
                let reader = self.reader(subject, hub.clone(), ring);
                return (reader, Joined::Existing);
            }
        }
        let hub = Arc::new(Hub {
            members: Mutex::new(Members {
                readers: vec![ring.clone()],
                closed: false,
            }),
            ready: watch::channel(None).0,
            stop: Mutex::default(),
        });
        hubs.insert(subject.to_owned(), hub.clone());
        drop(hubs);
        let creating = Creating {
            fanout: self.clone(),
            subject: subject.to_owned(),
            hub: hub.clone(),
            done: false,
        };
        (self.reader(subject, hub, ring), Joined::Create(creating))
    }

    fn reader(self: &Arc<Self>, subject: &str, hub: Arc<Hub>, ring: Arc<Ring>) -> Reader {
        Reader {
            fanout: self.clone(),
            subject: subject.to_owned(),
            hub,
            ring,
        }
    }

    /// Hand `frame` to this process's readers of `subject` (an append's wake-up, published with
    /// this origin).
    pub(crate) fn deliver(&self, subject: &str, frame: &Bytes) {
        let hub = lock(&self.hubs).get(subject).cloned();
        if let Some(hub) = hub {
            hub.each(|r| r.push(frame.clone()));
        }
    }

    /// Take `hub` out of the map if it is still `subject`'s, close it to new readers, and stop
    /// its feeding task.
    fn retire(&self, subject: &str, hub: &Arc<Hub>) {
        let mut hubs = lock(&self.hubs);
        Self::retire_locked(&mut hubs, subject, hub);
    }

    fn retire_locked(hubs: &mut HashMap<String, Arc<Hub>>, subject: &str, hub: &Arc<Hub>) {
        if hubs.get(subject).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            hubs.remove(subject);
        }
        lock(&hub.members).closed = true;
        if let Some(stop) = lock(&hub.stop).take() {
            let _ = stop.send(());
        }
    }
}

/// The first reader's job of subscribing; dropped before [`Creating::live`], it fails the
/// hub, so readers waiting on it give up and later ones start over.
pub(crate) struct Creating {
    fanout: Arc<Fanout>,
    subject: String,
    hub: Arc<Hub>,
    done: bool,
}

impl Creating {
    /// Feed the hub from `sub` (a subscription of the subject), reporting `Lagged` to every
    /// reader at each bump of `reconnects`.
    pub(crate) fn feed(
        &self,
        mut sub: async_nats::Subscriber,
        mut reconnects: watch::Receiver<u64>,
    ) {
        let (stop, mut stopped) = oneshot::channel::<()>();
        *lock(&self.hub.stop) = Some(stop);
        if lock(&self.hub.members).closed {
            // Retired already (dropping `sub` unsubscribes).
            return;
        }
        let hub = Arc::downgrade(&self.hub);
        let fanout = Arc::downgrade(&self.fanout);
        let subject = self.subject.clone();
        let origin = self.fanout.origin.clone();
        reconnects.borrow_and_update();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    r = reconnects.changed() => {
                        if r.is_err() {
                            break;
                        }
                        // Core NATS does not replay what was published while disconnected.
                        let Some(hub) = hub.upgrade() else { break };
                        hub.each(Ring::lag);
                    }
                    m = sub.next() => {
                        let Some(m) = m else { break };
                        // This connection's own appends were handed over already.
                        let mine = m
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(ORIGIN))
                            .is_some_and(|v| v.as_str() == origin);
                        if mine {
                            continue;
                        }
                        let Some(hub) = hub.upgrade() else { break };
                        hub.each(|r| r.push(m.payload.clone()));
                    }
                }
            }
            let _ = sub.unsubscribe().await;
            if let Some(hub) = hub.upgrade() {
                if let Some(fanout) = fanout.upgrade() {
                    fanout.retire(&subject, &hub);
                }
                hub.each(Ring::end);
            }
        });
    }

    /// The subscription is live on the server: readers may rely on it.
    pub(crate) fn live(mut self) {
        self.done = true;
        self.hub.ready.send_replace(Some(Ok(())));
    }
}

impl Drop for Creating {
    fn drop(&mut self) {
        if !self.done {
            self.fanout.retire(&self.subject, &self.hub);
            self.hub
                .ready
                .send_replace(Some(Err("the subscription could not be made".to_owned())));
            self.hub.each(Ring::end);
        }
    }
}

/// One reader of a subject; dropping it leaves the hub, and the last reader's leaving ends the
/// subscription.
pub(crate) struct Reader {
    fanout: Arc<Fanout>,
    subject: String,
    hub: Arc<Hub>,
    ring: Arc<Ring>,
}

impl Reader {
    /// Wait until the hub's subscription is live; `Err` when it could not be made.
    pub(crate) async fn live(&self) -> Result<(), String> {
        let mut ready = self.hub.ready.subscribe();
        let state = ready
            .wait_for(Option::is_some)
            .await
            .map_err(|_| "the subscription was dropped".to_owned())?;
        state.clone().unwrap_or(Ok(()))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Under the map's lock: no reader joins between the last one leaving and the hub
        // closing.
        let mut hubs = lock(&self.fanout.hubs);
        let last = {
            let mut m = lock(&self.hub.members);
            m.readers.retain(|r| !Arc::ptr_eq(r, &self.ring));
            m.readers.is_empty()
        };
        if last {
            Fanout::retire_locked(&mut hubs, &self.subject, &self.hub);
        }
    }
}

impl futures::Stream for Reader {
    type Item = Delivery;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.ring.waker.register(cx.waker());
        self.ring.poll()
    }
}

/// A reader's bounded buffer. When full, the oldest message is dropped and the reader gets
/// [`Delivery::Lagged`] before the next one: the newest messages (a run's end among them)
/// always get through, and memory stays bounded.
#[derive(Default)]
struct Ring {
    inner: Mutex<RingState>,
    waker: AtomicWaker,
}

#[derive(Default)]
struct RingState {
    queue: VecDeque<Bytes>,
    lagged: bool,
    ended: bool,
}

impl Ring {
    fn with(&self, f: impl FnOnce(&mut RingState)) {
        f(&mut lock(&self.inner));
        self.waker.wake();
    }

    fn push(&self, m: Bytes) {
        self.with(|s| {
            if s.queue.len() >= BUFFER {
                s.queue.pop_front();
                s.lagged = true;
            }
            s.queue.push_back(m);
        });
    }

    fn lag(&self) {
        self.with(|s| s.lagged = true);
    }

    fn end(&self) {
        self.with(|s| s.ended = true);
    }

    fn poll(&self) -> Poll<Option<Delivery>> {
        let mut s = lock(&self.inner);
        if s.lagged {
            s.lagged = false;
            return Poll::Ready(Some(Delivery::Lagged));
        }
        if let Some(m) = s.queue.pop_front() {
            return Poll::Ready(Some(Delivery::Message(m)));
        }
        if s.ended {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

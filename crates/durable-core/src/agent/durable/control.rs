//! Abort from any instance: the control topic (one subscription per instance), the abort
//! marker checked at every step, and forced aborts of runs with no live executor.

use super::*;

impl DurableAgent {
    pub(super) fn abort_marker(&self, run_id: &RunId) -> String {
        self.inner.log.names().run_key(run_id, "abort")
    }

    /// Abort requests for every run of this agent: the payload is the run id.
    pub(super) fn control_topic(&self) -> String {
        self.inner.log.names().control_topic(self.inner.agent.id())
    }

    /// Start this instance's control listener once. If the subscription fails, the next
    /// execution tries again; meanwhile aborts are still found by the per-step marker check.
    pub(super) async fn ensure_control(&self) {
        let mut control = self.inner.control.lock().await;
        if control.as_ref().is_some_and(|t| !t.is_cancelled()) {
            return;
        }
        match self.inner.pubsub.subscribe(&self.control_topic()).await {
            Ok(sub) => {
                let stop = CancellationToken::new();
                tokio::spawn(listen_control(
                    sub,
                    Arc::downgrade(&self.inner),
                    stop.clone(),
                ));
                *control = Some(stop);
            }
            Err(e) => {
                tracing::warn!(error = %e, "no control subscription; abort is checked at each step");
            }
        }
    }

    /// Abort a run, wherever it executes. Returns the run's final status (`Aborted`, or the
    /// terminal status it reached first). Aborting a finished run changes nothing.
    ///
    /// The executing instance is told over PubSub and by a marker it checks at every step; a
    /// run with no live executor (suspended, pending, or whose executor died) is aborted here.
    ///
    /// # Errors
    /// `NotFound` for an unknown run, `Timeout` if the executor neither stops nor loses its
    /// lease within two lease periods.
    pub async fn abort(&self, run_id: &RunId) -> Result<RunStatus> {
        let i = &self.inner;
        let record = self.status(run_id).await?;
        if record.status.is_terminal() {
            return Ok(record.status);
        }
        let local = lock(&i.local)
            .get(run_id)
            .map(|l| (l.cancel.clone(), l.stop.clone()));
        let running_elsewhere = record.status == RunStatus::Running && record.lease_live(now_ms());
        if local.is_none() && !running_elsewhere {
            return self.force_abort(run_id).await;
        }
        let from = if i.log.is_durable() {
            i.log.len(run_id).await?.unwrap_or(0)
        } else {
            0
        };
        let mut waiter = if i.log.is_durable() {
            Some(
                i.log
                    .observe(
                        run_id,
                        ObserveOptions::from(from).on_suspend(OnSuspend::Wait),
                    )
                    .await?,
            )
        } else {
            None
        };
        match local {
            Some((cancel, stop)) => {
                stop.set(StopReason::Abort);
                cancel.cancel();
            }
            None => {
                if let Some(cache) = &i.cache {
                    let keep = i.log.config().retention + i.log.config().tombstone;
                    cache
                        .set(
                            &self.abort_marker(run_id),
                            Bytes::from_static(b"1"),
                            Some(keep),
                        )
                        .await?;
                }
                i.pubsub
                    .publish(
                        &self.control_topic(),
                        Bytes::copy_from_slice(run_id.as_str().as_bytes()),
                    )
                    .await?;
            }
        }
        let limit = i.lease_ttl * 2 + Duration::from_secs(1);
        let mut ended_with = None;
        if let Some(w) = waiter.as_mut() {
            let ended = tokio::time::timeout(limit, async {
                while let Some(ev) = w.next().await {
                    match ev {
                        Ok(e) if e.kind.is_terminal() => {
                            ended_with = Some(e.kind);
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
            .await;
            if ended.is_err() {
                return match self.force_abort(run_id).await {
                    Err(e) if e.kind() == ErrorKind::Conflict => Err(Error::new(
                        ErrorKind::Timeout,
                        format!("run {run_id} did not stop within {limit:?}"),
                    )
                    .with_operation("abort")),
                    r => r,
                };
            }
        }
        // The terminal event is appended before the terminal status is written: answer from
        // the event, so the caller never reads a status that is about to change.
        match ended_with {
            Some(EventKind::Abort) => return Ok(RunStatus::Aborted),
            Some(EventKind::Finish) => return Ok(RunStatus::Completed),
            Some(EventKind::Error) => return Ok(RunStatus::Failed),
            _ => {}
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let status = self.status(run_id).await?.status;
            if status.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(super) async fn force_abort(&self, run_id: &RunId) -> Result<RunStatus> {
        let i = &self.inner;
        let lease = match i.store.claim(run_id, &i.worker_id, i.lease_ttl).await {
            Ok(l) => l,
            Err(e) if e.kind() == ErrorKind::InvalidState => {
                return Ok(self.status(run_id).await?.status)
            }
            Err(e) => return Err(e),
        };
        i.log.create(run_id, Some(lease.epoch)).await?;
        let ev = NewEvent::json(EventKind::Abort, &json!({"reason": "aborted"}))?;
        i.log.append(run_id, &[ev], Some(lease.epoch)).await?;
        i.log
            .finish(
                i.store.as_ref(),
                run_id,
                Some(lease.epoch),
                RunStatus::Aborted,
            )
            .await?;
        Ok(RunStatus::Aborted)
    }

    /// Stop every run executing in this process, leaving each as it is (resumable from its last
    /// checkpoint by [`recover`](DurableAgent::recover) here or on another instance). For a
    /// graceful process exit.
    ///
    /// Also ends this instance's control subscription (it is started again by the next run
    /// this instance executes).
    pub fn shutdown(&self) {
        for run in lock(&self.inner.local).values() {
            run.stop.set(StopReason::Shutdown);
            run.cancel.cancel();
        }
        if let Ok(control) = self.inner.control.try_lock() {
            if let Some(stop) = control.as_ref() {
                stop.cancel();
            }
        }
    }
}

/// Cancel the local runs named by abort requests, until the agent instance is dropped or
/// shut down (`stop`). Dropping `sub` on return unsubscribes.
pub(super) async fn listen_control(
    mut sub: crate::pubsub::Subscription,
    inner: std::sync::Weak<Inner>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            msg = sub.next() => match msg {
                Some(m) => m,
                None => return,
            },
        };
        let Some(inner) = inner.upgrade() else { return };
        let Delivery::Message(m) = msg else { continue };
        let Ok(run_id) = std::str::from_utf8(&m)
            .map_err(|_| Error::invalid_input("control message is not UTF-8"))
            .and_then(RunId::new)
        else {
            continue;
        };
        let local = lock(&inner.local);
        if let Some(run) = local.get(&run_id) {
            run.stop.set(StopReason::Abort);
            run.cancel.cancel();
        }
    }
}

//! Executing runs in this process: spawn with supervision (an interrupted execution restarts
//! from its last checkpoint by itself), the heartbeat that keeps the lease, recovery and
//! take-over of runs whose executor is gone.

use super::*;

impl DurableAgent {
    pub(super) fn writer_batches(&self) -> usize {
        match &self.inner.cache {
            Some(c) if c.capabilities().shared => REMOTE_WRITER_BATCHES,
            _ => LOCAL_WRITER_BATCHES,
        }
    }

    /// Runs of this agent that have not reached a terminal state (running, pending or
    /// suspended), from every instance.
    ///
    /// # Errors
    /// The store's error.
    pub async fn list_active_runs(&self) -> Result<Vec<RunRecord>> {
        let mut out = Vec::new();
        for status in [RunStatus::Running, RunStatus::Pending, RunStatus::Suspended] {
            out.extend(
                self.inner
                    .store
                    .list_runs(Some(status))
                    .await?
                    .into_iter()
                    .filter(|r| self.is_ours(r)),
            );
        }
        Ok(out)
    }

    /// Continue, in this process, every run of this agent whose executor is gone (lease
    /// expired, or held by this instance's own worker id from before a restart), from its last
    /// checkpoint. Returns the runs taken over. Completed tool calls are not executed again.
    ///
    /// # Errors
    /// The store's error.
    pub async fn recover(&self) -> Result<Vec<RunId>> {
        let i = &self.inner;
        let now = now_ms();
        let mut recovered = Vec::new();
        for record in self.list_active_runs().await? {
            let run_id = record.run_id.clone();
            if record.status == RunStatus::Suspended {
                self.repair_suspended(&record).await?;
                continue;
            }
            if lock(&i.local).contains_key(&run_id) {
                continue;
            }
            if record.lease_live(now) && record.owner.as_deref() != Some(i.worker_id.as_str()) {
                continue;
            }
            if self.take_over(&run_id).await?.is_some() {
                recovered.push(run_id);
            }
        }
        Ok(recovered)
    }

    /// Claim `run_id` and execute it here. `None` if another owner holds it or it finished.
    pub(crate) async fn take_over(&self, run_id: &RunId) -> Result<Option<JoinHandle<Outcome>>> {
        let i = &self.inner;
        let lease = match i.store.claim(run_id, &i.worker_id, i.lease_ttl).await {
            Ok(l) => l,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Conflict | ErrorKind::InvalidState | ErrorKind::NotFound
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = i.log.create(run_id, Some(lease.epoch)).await {
            let _ = i.store.release(&lease).await;
            return Err(e);
        }
        let Some(snapshot) = i.store.load(run_id).await? else {
            return Ok(None);
        };
        if snapshot.record.status == RunStatus::Pending {
            i.store
                .set_status(run_id, Some(lease.epoch), RunStatus::Running, None)
                .await?;
        }
        Ok(Some(self.spawn(run_id.clone(), lease, snapshot)))
    }

    /// A suspended run whose `suspended` event did not make it to the log (a crash between
    /// persisting and announcing) gets it now, so observers waiting for it see it.
    pub(super) async fn repair_suspended(&self, record: &RunRecord) -> Result<()> {
        let i = &self.inner;
        if !i.log.is_durable() {
            return Ok(());
        }
        let Some(len) = i.log.len(&record.run_id).await? else {
            return Ok(());
        };
        let last = match len {
            0 => None,
            n => i.log.read(&record.run_id, n - 1, 1).await?.pop(),
        };
        if last.is_some_and(|e| e.kind == EventKind::Suspended) {
            return Ok(());
        }
        let spec = self.spec_of(record)?;
        if let Some(s) = spec.suspension {
            let mut data = serde_json::to_value(&s)?;
            data["reason"] = "approval".into();
            let ev = NewEvent::json(EventKind::Suspended, &data)?;
            i.log.append(&record.run_id, &[ev], None).await?;
        }
        Ok(())
    }

    pub(super) fn spawn(
        &self,
        run_id: RunId,
        lease: Lease,
        snapshot: RunSnapshot,
    ) -> JoinHandle<Outcome> {
        let cancel = CancellationToken::new();
        let stop = StopFlag::default();
        lock(&self.inner.local).insert(
            run_id.clone(),
            LocalRun {
                cancel: cancel.clone(),
                stop: stop.clone(),
            },
        );
        let agent = self.clone();
        tokio::spawn(async move {
            let (mut lease, mut snapshot) = (lease, snapshot);
            let mut delay = RESTART_MIN;
            let outcome = loop {
                let outcome = agent
                    .execute(&run_id, lease, snapshot, cancel.clone(), stop.clone())
                    .await;
                if outcome != Outcome::Interrupted {
                    break outcome;
                }
                // Supervision: a backend outage outlasted the writer's retries. Restart from the
                // last checkpoint as soon as the backend answers, without waiting for anyone
                // to call `recover`.
                match agent.reacquire(&run_id, &cancel, &mut delay).await {
                    Some((l, s)) => (lease, snapshot) = (l, s),
                    None => break Outcome::Stopped,
                }
            };
            lock(&agent.inner.local).remove(&run_id);
            cancel.cancel();
            outcome
        })
    }

    /// Claim `run_id` again after an interrupted execution, retrying retryable errors with
    /// backoff until it succeeds, the run is cancelled (abort, shutdown), or the run is no
    /// longer ours to execute (another owner took it, it ended, it was deleted).
    pub(super) async fn reacquire(
        &self,
        run_id: &RunId,
        cancel: &CancellationToken,
        delay: &mut Duration,
    ) -> Option<(Lease, RunSnapshot)> {
        let i = &self.inner;
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(*delay) => {}
            }
            *delay = (*delay * 2).min(RESTART_MAX);
            let attempt = async {
                let lease = i.store.claim(run_id, &i.worker_id, i.lease_ttl).await?;
                i.log.create(run_id, Some(lease.epoch)).await?;
                let snapshot = i.store.load(run_id).await?;
                Ok::<_, Error>(snapshot.map(|s| (lease, s)))
            };
            match attempt.await {
                Ok(Some(found)) => {
                    tracing::info!(run_id = %run_id, "backend is back; restarting the run from its last checkpoint");
                    return Some(found);
                }
                Ok(None) => return None,
                Err(e) if e.is_retryable() => {
                    tracing::debug!(run_id = %run_id, error = %e, retry_in = ?delay, "backend still unavailable");
                }
                Err(e) => {
                    tracing::info!(run_id = %run_id, error = %e, "not restarting the run");
                    return None;
                }
            }
        }
    }

    pub(super) async fn execute(
        &self,
        run_id: &RunId,
        lease: Lease,
        snapshot: RunSnapshot,
        cancel: CancellationToken,
        stop: StopFlag,
    ) -> Outcome {
        let i = &self.inner;
        let spec = match self.spec_of(&snapshot.record) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(run_id = %run_id, error = %e, "cannot execute run");
                let _ = i
                    .log
                    .finish(
                        i.store.as_ref(),
                        run_id,
                        Some(lease.epoch),
                        RunStatus::Failed,
                    )
                    .await;
                return Outcome::Failed;
            }
        };
        let lease_active = Arc::new(tokio::sync::Mutex::new(true));
        tokio::spawn(heartbeat(
            i.store.clone(),
            lease.clone(),
            i.lease_ttl,
            lease_active.clone(),
            cancel.clone(),
            stop.clone(),
        ));
        self.ensure_control().await;
        let mut journal = Journal::restore(snapshot.checkpoints);
        let mut end = None;
        if i.log.is_durable() {
            match self.scan(run_id, &mut journal).await {
                Ok(Err(next)) => end = Some(next),
                Ok(Ok(ended)) => {
                    let outcome = match ended {
                        RunStatus::Completed => Outcome::Finished,
                        RunStatus::Aborted => Outcome::Aborted,
                        _ => Outcome::Failed,
                    };
                    *lease_active.lock().await = false;
                    if let Err(e) = i
                        .log
                        .finish(i.store.as_ref(), run_id, Some(lease.epoch), ended)
                        .await
                    {
                        tracing::warn!(run_id = %run_id, error = %e, "ended run not finished; the next recovery finishes it");
                    }
                    return outcome;
                }
                Err(e) => {
                    *lease_active.lock().await = false;
                    if e.is_retryable() {
                        tracing::warn!(run_id = %run_id, error = %e, "cannot read the run log; retrying");
                        return Outcome::Interrupted;
                    }
                    tracing::warn!(run_id = %run_id, error = %e, "cannot read the run log; leaving the run to recovery");
                    return Outcome::Stopped;
                }
            }
        }
        let memory = spec.thread_id.clone().map(|t| (i.memory.clone(), t));
        let runner = Runner {
            def: i.agent.def.clone(),
            run_id: run_id.clone(),
            spec,
            sink: Sink::Log(i.log.run_writer(
                run_id.clone(),
                Some(lease.epoch),
                self.writer_batches(),
                end,
            )),
            journal,
            cancel,
            stop,
            durable: Some(DurableCtx {
                store: i.store.clone(),
                log: i.log.clone(),
                epoch: lease.epoch,
                lease_active: lease_active.clone(),
                abort_marker: i.cache.clone().map(|c| (c, self.abort_marker(run_id))),
                memory,
            }),
            background: tokio::task::JoinSet::new(),
            appended: 0,
        };
        let outcome = runner.run().await;
        // This execution's heartbeat must not renew (or report a fence) once it is over: the
        // run may be claimed again at once by a restart.
        *lease_active.lock().await = false;
        outcome
    }

    /// Read the log from the journal's scan point; returns the terminal status if the log
    /// already ends the run, else (`Err`) the log's next cursor.
    pub(super) async fn scan(
        &self,
        run_id: &RunId,
        journal: &mut Journal,
    ) -> Result<std::result::Result<RunStatus, u64>> {
        let log = &self.inner.log;
        let mut from = journal.scan_from();
        let batch = log.config().read_batch.max(1);
        loop {
            let events = log.read(run_id, from, batch).await?;
            if events.is_empty() {
                return Ok(Err(from));
            }
            from += events.len() as u64;
            for ev in &events {
                match ev.kind {
                    EventKind::Finish => return Ok(Ok(RunStatus::Completed)),
                    EventKind::Error => return Ok(Ok(RunStatus::Failed)),
                    EventKind::Abort => return Ok(Ok(RunStatus::Aborted)),
                    _ => journal.observe(ev),
                }
            }
        }
    }
}

async fn heartbeat(
    store: Arc<dyn WorkflowStore>,
    mut lease: Lease,
    ttl: Duration,
    active: Arc<tokio::sync::Mutex<bool>>,
    cancel: CancellationToken,
    stop: StopFlag,
) {
    let every = ttl / 3;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let guard = active.lock().await;
        if !*guard {
            return;
        }
        match store.renew(&lease, ttl).await {
            Ok(l) => lease = l,
            Err(e) if e.kind() == ErrorKind::Fenced => {
                stop.set(StopReason::Fenced);
                cancel.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(run_id = %lease.run_id, error = %e, "lease not renewed; retrying");
            }
        }
    }
}

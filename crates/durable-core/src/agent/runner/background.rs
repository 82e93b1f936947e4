//! Background tool tasks of `until_idle` runs: started, restored after a restart, and turned
//! into follow-up turns when they complete.

use super::*;

impl Runner {
    pub(super) fn is_background(&self, call: &ToolCall) -> bool {
        self.spec.until_idle_ms.is_some()
            && self
                .def
                .tools
                .get(&call.name)
                .is_some_and(|t| t.background())
    }

    pub(super) async fn start_background(
        &mut self,
        step: u32,
        index: u32,
        call: &ToolCall,
    ) -> Step<ToolOutcome> {
        let ctx = self.begin_call(step, index, call).await?;
        let def = self.def.clone();
        let call = call.clone();
        // The task's tool span belongs to the step that started it.
        self.background.spawn(
            async move {
                let outcome = execute(&def, &call, ctx).await;
                BgDone {
                    step,
                    index,
                    call,
                    outcome,
                }
            }
            .in_current_span(),
        );
        Ok(ToolOutcome::Started(format!("s{step}-{index}")))
    }

    /// After a restart: restart background tasks that had not completed, and return the
    /// completions not yet given to the model.
    pub(super) async fn restore_background(&mut self) -> Step<Vec<Injection>> {
        if self.spec.until_idle_ms.is_none() {
            return Ok(Vec::new());
        }
        let Some(last) = self.journal.resume_step() else {
            return Ok(Vec::new());
        };
        let mut injected = HashSet::new();
        let mut started = Vec::new();
        for step in 0..=last {
            let Some(cp) = self.journal.model(step) else {
                continue;
            };
            injected.extend(cp.injected.iter().map(|i| i.task.clone()));
            for (i, call) in cp.output.tool_calls.iter().enumerate() {
                if matches!(
                    self.journal.tool(step, i as u32),
                    Some(ToolOutcome::Started(_))
                ) {
                    started.push((step, i as u32, call.clone()));
                }
            }
        }
        let mut pending = Vec::new();
        for (step, index, call) in started {
            let task = format!("s{step}-{index}");
            if injected.contains(&task) {
                continue;
            }
            let done: Option<ToolOutcome> = self
                .journal
                .checkpoints
                .get(&bg_key(step, index))
                .and_then(|v| serde_json::from_value(v.clone()).ok());
            match done {
                Some(outcome) => pending.push(injection(&task, &call, &outcome)),
                None => {
                    self.start_background(step, index, &call).await?;
                }
            }
        }
        Ok(pending)
    }

    /// Between turns (until idle): wait for background completions. `Turn` when there is
    /// something to tell the model, `Done` when nothing runs, `IdleTimeout` when tasks ran past
    /// the maximum idle time (they are cancelled).
    pub(super) async fn next_turn(&mut self, pending: &mut Vec<Injection>) -> Step<Next> {
        let Some(max_idle) = self
            .spec
            .until_idle_ms
            .map(std::time::Duration::from_millis)
        else {
            return Ok(Next::Done);
        };
        loop {
            while let Some(done) = self.background.try_join_next() {
                match done {
                    Ok(d) => pending.push(self.complete_background(d).await?),
                    Err(e) => background_failed(&self.run_id, &e)?,
                }
            }
            if !pending.is_empty() {
                return Ok(Next::Turn);
            }
            if self.background.is_empty() {
                return Ok(Next::Done);
            }
            self.flush().await?;
            let cancel = self.cancel.clone();
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(Halt::Cancelled),
                n = tokio::time::timeout(max_idle, self.background.join_next()) => n,
            };
            match next {
                Err(_) => {
                    self.background.abort_all();
                    return Ok(Next::IdleTimeout);
                }
                Ok(Some(Ok(d))) => pending.push(self.complete_background(d).await?),
                Ok(Some(Err(e))) => background_failed(&self.run_id, &e)?,
                Ok(None) => {}
            }
        }
    }

    pub(super) async fn complete_background(&mut self, d: BgDone) -> Step<Injection> {
        let value = serde_json::to_value(&d.outcome).map_err(|e| fatal(e.into()))?;
        let stored = self.checkpoint(bg_key(d.step, d.index), value).await?;
        let outcome: ToolOutcome = serde_json::from_value(stored).map_err(|e| fatal(e.into()))?;
        let mut data = json!({
            "step": d.step, "index": d.index, "tool_call_id": d.call.id,
            "tool_name": d.call.name, "background": true,
        });
        let kind = match &outcome {
            ToolOutcome::Error(e) => {
                data["error"] = e.clone().into();
                EventKind::ToolError
            }
            o => {
                data["result"] = match o {
                    ToolOutcome::Ok(v) => v.clone(),
                    o => o.for_model().into(),
                };
                EventKind::ToolResult
            }
        };
        self.emit_once(kind, data).await?;
        Ok(injection(
            &format!("s{}-{}", d.step, d.index),
            &d.call,
            &outcome,
        ))
    }
}

/// A finished background task.
pub(crate) struct BgDone {
    pub(super) step: u32,
    pub(super) index: u32,
    pub(super) call: ToolCall,
    pub(super) outcome: ToolOutcome,
}

pub(super) enum Next {
    Turn,
    Done,
    IdleTimeout,
}

pub(super) fn injection(task: &str, call: &ToolCall, outcome: &ToolOutcome) -> Injection {
    Injection {
        task: task.to_owned(),
        message: Message::user(format!(
            "Background task {} (tool call {}) finished: {}",
            call.name,
            call.id,
            outcome.for_model()
        )),
    }
}

/// A background task that ended without a result. Cancelled means its runtime is shutting
/// down (this runner never aborts one it still waits for): stop, and leave the run to recovery
/// rather than finish it as if the task were done. A panic is logged and the task dropped.
fn background_failed(run_id: &RunId, e: &tokio::task::JoinError) -> Step<()> {
    if e.is_cancelled() {
        return Err(Halt::Cancelled);
    }
    tracing::warn!(run_id = %run_id, error = %e, "background task panicked");
    Ok(())
}

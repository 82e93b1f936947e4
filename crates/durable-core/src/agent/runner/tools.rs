//! The tool phase of a step: approval, concurrent execution, outcomes checkpointed before
//! their events.

use super::*;

impl Runner {
    pub(super) async fn tool_phase(
        &mut self,
        step: u32,
        calls: &[ToolCall],
        replay: bool,
    ) -> Step<ToolPhase> {
        let needs_approval: Vec<bool> = calls
            .iter()
            .map(|c| {
                self.spec.require_tool_approval
                    || self
                        .def
                        .tools
                        .get(&c.name)
                        .is_some_and(|t| t.requires_approval(&c.arguments))
            })
            .collect();
        let mut outcomes: Vec<Option<ToolOutcome>> = (0..calls.len())
            .map(|i| self.journal.tool(step, i as u32))
            .collect();
        if needs_approval.iter().any(|b| *b) {
            // One by one, in order: the run suspends at the first call without a decision.
            for (i, call) in calls.iter().enumerate() {
                let index = i as u32;
                if outcomes[i].is_none() {
                    let outcome = if needs_approval[i] {
                        match self.journal.decision(step, index) {
                            None => return self.suspend(step, index, call).await,
                            Some(Decision {
                                approved: false,
                                reason,
                            }) => ToolOutcome::Declined(reason),
                            Some(_) => self.run_call(step, index, call).await?,
                        }
                    } else {
                        self.run_call(step, index, call).await?
                    };
                    outcomes[i] = Some(self.record_outcome(step, index, outcome).await?);
                }
                if !replay {
                    self.emit_result(step, index, call, outcomes[i].as_ref())
                        .await?;
                }
            }
        } else {
            // Results of calls completed before a crash go out first (if missing); the rest
            // run concurrently and are announced as they complete.
            for (i, call) in calls.iter().enumerate() {
                if outcomes[i].is_some() && !replay {
                    self.emit_result(step, i as u32, call, outcomes[i].as_ref())
                        .await?;
                }
            }
            for (i, call) in calls.iter().enumerate() {
                if outcomes[i].is_none() && self.is_background(call) {
                    let outcome = self.start_background(step, i as u32, call).await?;
                    outcomes[i] = Some(self.record_outcome(step, i as u32, outcome).await?);
                    if !replay {
                        self.emit_result(step, i as u32, call, outcomes[i].as_ref())
                            .await?;
                    }
                }
            }
            let pending: Vec<(usize, ToolCall)> = calls
                .iter()
                .enumerate()
                .filter(|(i, _)| outcomes[*i].is_none())
                .map(|(i, c)| (i, c.clone()))
                .collect();
            let mut started = Vec::with_capacity(pending.len());
            for (i, call) in pending {
                let ctx = self.begin_call(step, i as u32, &call).await?;
                started.push((i, call, ctx));
            }
            let cancel = self.cancel.clone();
            let def = self.def.clone();
            let mut running = futures::stream::iter(started.into_iter().map(|(i, call, ctx)| {
                let def = def.clone();
                async move {
                    let outcome = execute(&def, &call, ctx).await;
                    (i, call, outcome)
                }
            }))
            .buffer_unordered(self.def.tool_concurrency);
            loop {
                let next = tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Err(Halt::Cancelled),
                    n = running.next() => n,
                };
                let Some((i, call, outcome)) = next else {
                    break;
                };
                let index = i as u32;
                outcomes[i] = Some(self.record_outcome(step, index, outcome).await?);
                if !replay {
                    self.emit_result(step, index, &call, outcomes[i].as_ref())
                        .await?;
                }
            }
        }
        let results = calls
            .iter()
            .zip(outcomes)
            .map(|(call, o)| {
                let text = o.map_or_else(|| "Error: no result".to_owned(), |o| o.for_model());
                Message::tool(call.id.clone(), text)
            })
            .collect();
        Ok(ToolPhase::Done(results))
    }

    /// Run a call in the foreground, or start it as a background task.
    pub(super) async fn run_call(
        &mut self,
        step: u32,
        index: u32,
        call: &ToolCall,
    ) -> Step<ToolOutcome> {
        if self.is_background(call) {
            return self.start_background(step, index, call).await;
        }
        self.execute_one(step, index, call).await
    }

    pub(super) async fn execute_one(
        &mut self,
        step: u32,
        index: u32,
        call: &ToolCall,
    ) -> Step<ToolOutcome> {
        let ctx = self.begin_call(step, index, call).await?;
        let cancel = self.cancel.clone();
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(Halt::Cancelled),
            o = execute(&self.def, call, ctx) => Ok(o),
        }
    }

    pub(super) async fn record_outcome(
        &mut self,
        step: u32,
        index: u32,
        outcome: ToolOutcome,
    ) -> Step<ToolOutcome> {
        let value = serde_json::to_value(&outcome).map_err(|e| fatal(e.into()))?;
        let stored = self.checkpoint(tool_key(step, index), value).await?;
        serde_json::from_value(stored).map_err(|e| fatal(e.into()))
    }

    pub(super) async fn emit_result(
        &mut self,
        step: u32,
        index: u32,
        call: &ToolCall,
        outcome: Option<&ToolOutcome>,
    ) -> Step<()> {
        let base = |extra: (&str, Value)| {
            let mut m = serde_json::Map::new();
            m.insert("step".into(), step.into());
            m.insert("index".into(), index.into());
            m.insert("tool_call_id".into(), call.id.clone().into());
            m.insert("tool_name".into(), call.name.clone().into());
            m.insert(extra.0.into(), extra.1);
            Value::Object(m)
        };
        let (kind, data) = match outcome {
            Some(ToolOutcome::Ok(v)) => (EventKind::ToolResult, base(("result", v.clone()))),
            Some(ToolOutcome::Error(e)) => {
                (EventKind::ToolError, base(("error", e.clone().into())))
            }
            Some(ToolOutcome::Started(task)) => (
                EventKind::ToolResult,
                base(("result", json!({"status": "started", "task": task}))),
            ),
            Some(o @ ToolOutcome::Declined(reason)) => {
                let mut d = base(("result", o.for_model().into()));
                d["declined"] = true.into();
                // The decliner's own words, apart from the text given to the model.
                if let Some(r) = reason {
                    d["reason"] = r.clone().into();
                }
                (EventKind::ToolResult, d)
            }
            None => return Ok(()),
        };
        self.emit_once(kind, data).await
    }

    pub(super) async fn suspend(
        &mut self,
        step: u32,
        index: u32,
        call: &ToolCall,
    ) -> Step<ToolPhase> {
        let s = Suspension {
            step,
            index,
            tool_call_id: call.id.clone(),
            tool_name: call.name.clone(),
            args: call.arguments.clone(),
        };
        let mut data = serde_json::to_value(&s).map_err(|e| fatal(e.into()))?;
        self.emit_once(EventKind::ToolCallApproval, data.clone())
            .await?;
        self.flush().await?;
        if let Some(d) = &self.durable {
            self.spec.suspension = Some(s);
            let spec = serde_json::to_value(&self.spec).map_err(|e| fatal(e.into()))?;
            *d.lease_active.lock().await = false;
            d.store
                .set_status(
                    &self.run_id,
                    Some(d.epoch),
                    RunStatus::Suspended,
                    Some(spec),
                )
                .await
                .map_err(fatal)?;
        }
        data["reason"] = "approval".into();
        self.emit_once(EventKind::Suspended, data).await?;
        self.flush().await?;
        Ok(ToolPhase::Suspended)
    }

    /// Record that a tool call is about to start and build its context (with its attempt
    /// number, see [`ToolContext::attempt`]).
    pub(super) async fn begin_call(
        &mut self,
        step: u32,
        index: u32,
        call: &ToolCall,
    ) -> Step<ToolContext> {
        let attempt = self.journal.attempts(step, index) + 1;
        if self.durable.is_some() {
            self.checkpoint(tool_start_key(step, index, attempt), json!(now_ms()))
                .await?;
        }
        Ok(ToolContext {
            run_id: self.run_id.clone(),
            step,
            index,
            tool_call_id: call.id.clone(),
            attempt,
            cancel: self.cancel.child_token(),
        })
    }
}

pub(super) enum ToolPhase {
    Done(Vec<Message>),
    Suspended,
}

pub(super) async fn execute(def: &AgentDef, call: &ToolCall, ctx: ToolContext) -> ToolOutcome {
    let Some(tool) = def.tools.get(&call.name) else {
        return ToolOutcome::Error(format!("unknown tool {:?}", call.name));
    };
    run_tool(tool.as_ref(), call.arguments.clone(), ctx).await
}

pub(super) async fn run_tool(tool: &dyn Tool, args: Value, ctx: ToolContext) -> ToolOutcome {
    let span = crate::telemetry::tool_span(
        tool.name(),
        &ctx.tool_call_id,
        ctx.run_id.as_str(),
        ctx.step,
    );
    match tool.execute(args, ctx).instrument(span.clone()).await {
        Ok(v) => ToolOutcome::Ok(v),
        Err(e) => {
            span.record("error.type", "tool_error");
            ToolOutcome::Error(e.message().to_owned())
        }
    }
}

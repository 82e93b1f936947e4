//! The journal: checkpoint keys and formats, a persisted compatibility surface (runs written
//! by one version are continued by the next), and what a restarted execution knows of its log.

use super::*;

/// The complete output of one model call, as checkpointed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct StepOutput {
    pub(crate) text: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) reasoning: String,
    #[serde(default)]
    pub(crate) tool_calls: Vec<ToolCall>,
    pub(crate) finish_reason: Option<FinishReason>,
    #[serde(default)]
    pub(crate) usage: Usage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ModelCheckpoint {
    pub(crate) output: StepOutput,
    /// Background-task completions given to the model right before this step (until idle).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) injected: Vec<Injection>,
    /// The log's next cursor when the checkpoint was written.
    pub(crate) cursor: Cursor,
}

/// A background task's completion, as told to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Injection {
    pub(crate) task: String,
    pub(crate) message: Message,
}

/// The completion of background tool call `index` of step `step` (`bg-s{step}-{index}`).
pub fn bg_key(step: u32, index: u32) -> String {
    format!("bg-s{step}-{index}")
}

/// What a tool call produced, as checkpointed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ToolOutcome {
    Ok(Value),
    Error(String),
    Declined(Option<String>),
    /// Running as a background task (until idle); the completion comes later.
    Started(String),
}

/// The text given to the model for a declined call.
pub(crate) const DECLINED: &str = "Tool call was not approved by the user";

impl ToolOutcome {
    pub(crate) fn for_model(&self) -> String {
        match self {
            ToolOutcome::Ok(Value::String(s)) => s.clone(),
            ToolOutcome::Ok(v) => v.to_string(),
            ToolOutcome::Error(e) => format!("Error: {e}"),
            ToolOutcome::Declined(None) => DECLINED.to_owned(),
            ToolOutcome::Declined(Some(r)) => format!("{DECLINED}: {r}"),
            ToolOutcome::Started(task) => format!(
                "{{\"status\":\"started\",\"task\":\"{task}\",\"note\":\"running in the background; its result arrives in a later message\"}}"
            ),
        }
    }
}

/// An approval decision, as checkpointed by `resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Decision {
    pub(crate) approved: bool,
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

/// The complete output of model step `step` (`s{step}-model`), with the log cursor after it.
pub fn model_key(step: u32) -> String {
    format!("s{step}-model")
}

/// The outcome of tool call `index` of step `step` (`s{step}-tool-{index}`).
pub fn tool_key(step: u32, index: u32) -> String {
    format!("s{step}-tool-{index}")
}

/// The approval decision for tool call `index` of step `step` (`s{step}-approval-{index}`).
pub fn approval_key(step: u32, index: u32) -> String {
    format!("s{step}-approval-{index}")
}

/// Written before attempt `attempt` of a tool call starts executing, so the next attempt after
/// a crash knows its number (`s{step}-tool-{index}-start-{attempt}`).
pub fn tool_start_key(step: u32, index: u32, attempt: u32) -> String {
    format!("s{step}-tool-{index}-start-{attempt}")
}

/// Checkpoints of the run so far, and which events of the current step the log already holds.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    pub(crate) checkpoints: HashMap<String, Value>,
    pub(crate) marks: HashSet<String>,
}

impl Journal {
    pub(crate) fn ephemeral() -> Self {
        Self::default()
    }

    /// Rebuild from stored checkpoints and the log (read from [`Journal::scan_from`]).
    pub(crate) fn restore(checkpoints: Vec<(String, Value)>) -> Self {
        Self {
            checkpoints: checkpoints.into_iter().collect(),
            marks: HashSet::new(),
        }
    }

    /// The latest step with a model checkpoint.
    pub(crate) fn resume_step(&self) -> Option<u32> {
        self.checkpoints
            .keys()
            .filter_map(|k| k.strip_prefix('s')?.strip_suffix("-model")?.parse().ok())
            .max()
    }

    /// Where to start reading the log to learn which events are already there.
    pub(crate) fn scan_from(&self) -> Cursor {
        self.resume_step()
            .and_then(|s| self.model(s))
            .map_or(0, |cp| cp.cursor)
    }

    /// Record the identity of an event found in the log.
    pub(crate) fn observe(&mut self, event: &Event) {
        if let Some(m) = mark_of(&event.kind, &event.data.to_value()) {
            self.marks.insert(m);
        }
    }

    pub(crate) fn model(&self, step: u32) -> Option<ModelCheckpoint> {
        serde_json::from_value(self.checkpoints.get(&model_key(step))?.clone()).ok()
    }

    pub(crate) fn tool(&self, step: u32, index: u32) -> Option<ToolOutcome> {
        serde_json::from_value(self.checkpoints.get(&tool_key(step, index))?.clone()).ok()
    }

    /// Attempts of a tool call started so far.
    pub(crate) fn attempts(&self, step: u32, index: u32) -> u32 {
        let mut n = 0;
        while self
            .checkpoints
            .contains_key(&tool_start_key(step, index, n + 1))
        {
            n += 1;
        }
        n
    }

    pub(crate) fn decision(&self, step: u32, index: u32) -> Option<Decision> {
        serde_json::from_value(self.checkpoints.get(&approval_key(step, index))?.clone()).ok()
    }
}

/// The identity of an event that must appear at most once in a log.
pub(crate) fn mark_of(kind: &EventKind, data: &Value) -> Option<String> {
    let step = data.get("step").and_then(Value::as_u64);
    let index = data.get("index").and_then(Value::as_u64);
    match (kind, step, index) {
        (EventKind::Start, _, _) => Some("start".to_owned()),
        (EventKind::StepStart, Some(s), _) => Some(format!("step-start:{s}")),
        (EventKind::StepFinish, Some(s), _) => Some(format!("step-finish:{s}")),
        (EventKind::ToolResult | EventKind::ToolError, Some(s), Some(i)) => {
            if data.get("background").and_then(Value::as_bool) == Some(true) {
                Some(format!("bg:{s}:{i}"))
            } else {
                Some(format!("result:{s}:{i}"))
            }
        }
        (EventKind::ToolCallApproval, Some(s), Some(i)) => Some(format!("approval:{s}:{i}")),
        (EventKind::Suspended, Some(s), Some(i)) => Some(format!("suspended:{s}:{i}")),
        _ => None,
    }
}

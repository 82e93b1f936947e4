//! Tools the model can call: the [`Tool`] trait, its context, and typed tools from async fns.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::id::RunId;

/// What a tool execution knows about its call.
///
/// **Delivery semantics.** A tool call whose result was checkpointed is never executed again,
/// whatever crashes later. A call interrupted *while it executes* (its process dies, or a newer
/// owner takes the run over) is started again after recovery: tools are executed
/// **at least once**, exactly once when nothing crashes. A tool with an external side effect
/// de-duplicates it with [`ToolContext::idempotency_key`] (stable across attempts, unique per
/// call) and may look at [`ToolContext::attempt`] (1 on the first start).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ToolContext {
    /// The run the call belongs to.
    pub run_id: RunId,
    /// The model step (0-based) that made the call.
    pub step: u32,
    /// The call's position among the step's tool calls (0-based).
    pub index: u32,
    /// The provider's id of the call.
    pub tool_call_id: String,
    /// How many times this call has been started, this one included (1 the first time; more
    /// after a crash interrupted an earlier attempt). Always 1 for a non-durable run.
    pub attempt: u32,
    /// Cancelled when the run is aborted, fenced off by a newer owner, or shut down. The
    /// tool's future is then dropped; work it handed elsewhere (a spawned task, a subprocess, a
    /// remote job) should watch this token and stop.
    pub cancel: CancellationToken,
}

impl ToolContext {
    /// The context of attempt `attempt` of call `index` of step `step`, for execution
    /// strategies outside this crate (such as `durable-restate`) that run tools themselves.
    pub fn new(
        run_id: RunId,
        step: u32,
        index: u32,
        tool_call_id: impl Into<String>,
        attempt: u32,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            run_id,
            step,
            index,
            tool_call_id: tool_call_id.into(),
            attempt,
            cancel,
        }
    }

    /// A key that identifies this tool call across every attempt and every process:
    /// `<run id>/<step>/<index>/<tool call id>`. Pass it to an external API as its idempotency
    /// key (or store it beside the side effect) so a call restarted after a crash does not do
    /// its work twice.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.run_id, self.step, self.index, self.tool_call_id
        )
    }
}

/// A tool failed. The message is given to the model as the tool's result, and published as a
/// `tool-error` event; the run goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    message: String,
}

impl ToolError {
    /// A tool error with a message for the model.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ToolError {}

impl From<crate::Error> for ToolError {
    fn from(e: crate::Error) -> Self {
        Self::new(e.to_string())
    }
}

/// A tool the model may call.
///
/// Tools are looked up by name when a run executes, so a run recovered or resumed in another
/// process finds the same tool there by name: register the same tools on every instance.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// The name the model calls it by (`[A-Za-z0-9_-]`, 1 to 64 characters).
    fn name(&self) -> &str;

    /// What it does, for the model.
    fn description(&self) -> &str;

    /// JSON schema of the arguments object.
    fn parameters(&self) -> Value;

    /// Whether this call must be approved by a person before it runs. The decision is data
    /// (computed from the arguments), so a run resumed in another process decides the same.
    fn requires_approval(&self, _args: &Value) -> bool {
        false
    }

    /// Whether the tool runs as a background task when the run streams `until_idle`: the model
    /// gets a "started" result at once, and the completion starts a follow-up turn on the same
    /// run. Without `until_idle` the tool runs in the foreground like any other.
    fn background(&self) -> bool {
        false
    }

    /// Run the tool.
    ///
    /// # Errors
    /// A [`ToolError`] whose message the model receives.
    async fn execute(&self, args: Value, ctx: ToolContext) -> Result<Value, ToolError>;
}

impl fmt::Debug for dyn Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tool").field("name", &self.name()).finish()
    }
}

type ApprovalFn = dyn Fn(&Value) -> bool + Send + Sync;

type ToolFn<A> =
    dyn Fn(A, ToolContext) -> BoxFuture<'static, Result<Value, ToolError>> + Send + Sync;

/// A tool defined by a typed async function: the arguments are deserialized into `A` and the
/// JSON schema is derived from `A` (with `schemars`).
///
/// ```
/// use durable_core::agent::{FnTool, ToolContext, ToolError};
/// use serde::Deserialize;
///
/// #[derive(Deserialize, schemars::JsonSchema)]
/// struct Weather { city: String }
///
/// let tool = FnTool::new("weather", "Current weather of a city", |a: Weather, _ctx: ToolContext| async move {
///     Ok::<_, ToolError>(format!("sunny in {}", a.city))
/// });
/// ```
pub struct FnTool<A> {
    name: String,
    description: String,
    parameters: Value,
    approval: Option<Arc<ApprovalFn>>,
    background: bool,
    f: Arc<ToolFn<A>>,
    _args: PhantomData<fn(A)>,
}

impl<A> fmt::Debug for FnTool<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnTool").field("name", &self.name).finish()
    }
}

impl<A: DeserializeOwned + JsonSchema + Send + 'static> FnTool<A> {
    /// A tool called `name` that runs `f`. `f` may return any serializable value.
    pub fn new<F, Fut, R>(name: impl Into<String>, description: impl Into<String>, f: F) -> Self
    where
        F: Fn(A, ToolContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ToolError>> + Send + 'static,
        R: Serialize,
    {
        let schema = schemars::schema_for!(A);
        let mut parameters = serde_json::to_value(schema).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut parameters {
            m.remove("$schema");
            m.remove("title");
        }
        let f = Arc::new(f);
        Self {
            name: name.into(),
            description: description.into(),
            parameters,
            approval: None,
            background: false,
            f: Arc::new(move |a, ctx| {
                let fut = f(a, ctx);
                Box::pin(async move {
                    let r = fut.await?;
                    serde_json::to_value(r)
                        .map_err(|e| ToolError::new(format!("tool result is not JSON: {e}")))
                })
            }),
            _args: PhantomData,
        }
    }

    /// Every call needs approval.
    #[must_use]
    pub fn require_approval(mut self) -> Self {
        self.approval = Some(Arc::new(|_| true));
        self
    }

    /// Calls need approval when `pred(args)` holds.
    #[must_use]
    pub fn require_approval_if(
        mut self,
        pred: impl Fn(&Value) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.approval = Some(Arc::new(pred));
        self
    }

    /// Run as a background task under `until_idle` (see [`Tool::background`]).
    #[must_use]
    pub fn background(mut self) -> Self {
        self.background = true;
        self
    }
}

#[async_trait]
impl<A: DeserializeOwned + JsonSchema + Send + 'static> Tool for FnTool<A> {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn parameters(&self) -> Value {
        self.parameters.clone()
    }

    fn requires_approval(&self, args: &Value) -> bool {
        self.approval.as_ref().is_some_and(|p| p(args))
    }

    fn background(&self) -> bool {
        self.background
    }

    async fn execute(&self, args: Value, ctx: ToolContext) -> Result<Value, ToolError> {
        let a: A = serde_json::from_value(args)
            .map_err(|e| ToolError::new(format!("invalid arguments for {}: {e}", self.name)))?;
        (self.f)(a, ctx).await
    }
}

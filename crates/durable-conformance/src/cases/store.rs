//! [`WorkflowStore`](durable_core::WorkflowStore) cases.

use std::sync::Arc;
use std::time::Duration;

use durable_core::{ErrorKind, NewRun, RunStatus, WorkflowStore};
use serde_json::json;

use super::support::{eventually, expect_kind, run_id};

use crate::harness::{ensure, skip_capability, Backend, CaseResult, Stop};

fn store(b: &Backend) -> Result<Arc<dyn WorkflowStore>, Stop> {
    b.store_under_test()
        .ok_or_else(|| Stop::missing(crate::Part::Store))
}

/// Claim for `owner` once the current lease has expired (bounded wait).
async fn claim_eventually(
    s: &Arc<dyn WorkflowStore>,
    id: &durable_core::RunId,
    owner: &str,
) -> Result<durable_core::Lease, Stop> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match s.claim(id, owner, Duration::from_secs(30)).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == ErrorKind::Conflict && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => {
                return Err(Stop::Fail(format!(
                    "claim by {owner} after lease expiry: {e}"
                )))
            }
        }
    }
}

/// Creating an existing run is `Conflict` and changes nothing.
pub async fn create_run_twice_conflicts(b: Backend) -> CaseResult {
    let s = store(&b)?;
    let id = run_id("create");
    let rec = s
        .create_run(NewRun::new(id.clone()).data(json!({"v": 1})))
        .await?;
    ensure(
        rec.epoch == 0 && rec.status == RunStatus::Pending && rec.owner.is_none(),
        || format!("new record {rec:?}"),
    )?;
    expect_kind(
        "second create",
        s.create_run(NewRun::new(id.clone()).data(json!({"v": 2})))
            .await,
        ErrorKind::Conflict,
    )?;
    let got = s.get_run(&id).await?;
    ensure(got.is_some_and(|r| r.data == json!({"v": 1})), || {
        "record changed by conflicting create".into()
    })?;
    s.delete_run(&id).await?;
    Ok(())
}

/// A lease is exclusive until it expires; the next claim gets a higher epoch.
pub async fn claim_is_exclusive_until_lease_expires(b: Backend) -> CaseResult {
    let s = store(&b)?;
    let id = run_id("claim");
    s.create_run(NewRun::new(id.clone())).await?;
    let a = s.claim(&id, "worker-a", Duration::from_millis(400)).await?;
    ensure(a.epoch == 1, || format!("first claim epoch {}", a.epoch))?;
    expect_kind(
        "claim while leased",
        s.claim(&id, "worker-b", Duration::from_secs(5)).await,
        ErrorKind::Conflict,
    )?;
    let b_epoch = claim_eventually(&s, &id, "worker-b").await?.epoch;
    ensure(b_epoch == 2, || format!("takeover epoch {b_epoch}, want 2"))?;
    let rec = s
        .get_run(&id)
        .await?
        .ok_or_else(|| Stop::Fail("record gone".into()))?;
    ensure(
        rec.owner.as_deref() == Some("worker-b") && rec.epoch == 2,
        || format!("record after takeover {rec:?}"),
    )?;
    expect_kind(
        "claim unknown",
        s.claim(&run_id("none"), "w", Duration::from_secs(1)).await,
        ErrorKind::NotFound,
    )?;
    s.delete_run(&id).await?;
    Ok(())
}

/// Every write of a superseded owner is rejected with `Fenced`.
pub async fn stale_epoch_is_fenced(b: Backend) -> CaseResult {
    let s = store(&b)?;
    let id = run_id("fence");
    s.create_run(NewRun::new(id.clone()).status(RunStatus::Running))
        .await?;
    let old = s.claim(&id, "old", Duration::from_millis(200)).await?;
    let new = claim_eventually(&s, &id, "new").await?;
    expect_kind(
        "renew",
        s.renew(&old, Duration::from_secs(1)).await,
        ErrorKind::Fenced,
    )?;
    expect_kind(
        "checkpoint",
        s.checkpoint(&id, old.epoch, "step-1", json!("old")).await,
        ErrorKind::Fenced,
    )?;
    expect_kind(
        "set_status",
        s.set_status(&id, Some(old.epoch), RunStatus::Completed, None)
            .await,
        ErrorKind::Fenced,
    )?;
    expect_kind("release", s.release(&old).await, ErrorKind::Fenced)?;
    let v = s.checkpoint(&id, new.epoch, "step-1", json!("new")).await?;
    ensure(v == json!("new"), || {
        format!("current owner's checkpoint stored {v}")
    })?;
    let rec = s
        .get_run(&id)
        .await?
        .ok_or_else(|| Stop::Fail("record gone".into()))?;
    ensure(
        rec.status == RunStatus::Running && rec.owner.as_deref() == Some("new"),
        || format!("fenced writes changed the record: {rec:?}"),
    )?;
    s.release(&new).await?;
    s.delete_run(&id).await?;
    Ok(())
}

/// First write wins: re-writing a checkpoint returns the stored output; order is kept.
pub async fn checkpoint_is_idempotent(b: Backend) -> CaseResult {
    let s = store(&b)?;
    let id = run_id("ckpt");
    s.create_run(NewRun::new(id.clone())).await?;
    let l = s.claim(&id, "w", Duration::from_secs(30)).await?;
    for (k, v) in [("step-2", 2), ("step-1", 1), ("step-3/tool/a", 3)] {
        s.checkpoint(&id, l.epoch, k, json!(v)).await?;
    }
    let again = s.checkpoint(&id, l.epoch, "step-1", json!(99)).await?;
    ensure(again == json!(1), || {
        format!("re-written checkpoint returned {again}")
    })?;
    let snap = s
        .load(&id)
        .await?
        .ok_or_else(|| Stop::Fail("load returned None".into()))?;
    let keys: Vec<&str> = snap.checkpoints.iter().map(|(k, _)| k.as_str()).collect();
    ensure(keys == ["step-2", "step-1", "step-3/tool/a"], || {
        format!("checkpoint order {keys:?}")
    })?;
    ensure(snap.checkpoint("step-1") == Some(&json!(1)), || {
        "checkpoint value changed".into()
    })?;
    expect_kind(
        "bad key",
        s.checkpoint(&id, l.epoch, "a b*", json!(0)).await,
        ErrorKind::InvalidInput,
    )?;
    s.delete_run(&id).await?;
    Ok(())
}

/// A terminal status is final; a terminal run cannot be claimed.
pub async fn terminal_status_is_final(b: Backend) -> CaseResult {
    let s = store(&b)?;
    let id = run_id("term");
    s.create_run(NewRun::new(id.clone())).await?;
    let l = s.claim(&id, "w", Duration::from_secs(30)).await?;
    let rec = s
        .set_status(
            &id,
            Some(l.epoch),
            RunStatus::Completed,
            Some(json!({"done": true})),
        )
        .await?;
    ensure(
        rec.status == RunStatus::Completed && rec.owner.is_none(),
        || format!("completed record {rec:?}"),
    )?;
    expect_kind(
        "status after terminal",
        s.set_status(&id, None, RunStatus::Running, None).await,
        ErrorKind::InvalidState,
    )?;
    expect_kind(
        "claim terminal",
        s.claim(&id, "w2", Duration::from_secs(1)).await,
        ErrorKind::InvalidState,
    )?;
    s.delete_run(&id).await?;
    Ok(())
}

/// `list_runs(status)` lists exactly the runs in that status.
pub async fn list_runs_by_status(b: Backend) -> CaseResult {
    let s = store(&b)?;
    let ids: Vec<_> = (0..4).map(|_| run_id("list")).collect();
    for id in &ids {
        s.create_run(NewRun::new(id.clone())).await?;
    }
    s.set_status(&ids[1], None, RunStatus::Running, None)
        .await?;
    s.set_status(&ids[2], None, RunStatus::Suspended, None)
        .await?;
    s.set_status(&ids[3], None, RunStatus::Running, None)
        .await?;
    s.set_status(&ids[3], None, RunStatus::Failed, None).await?;
    for (status, want) in [
        (RunStatus::Pending, vec![&ids[0]]),
        (RunStatus::Running, vec![&ids[1]]),
        (RunStatus::Suspended, vec![&ids[2]]),
        (RunStatus::Failed, vec![&ids[3]]),
    ] {
        let listed = s.list_runs(Some(status)).await?;
        ensure(listed.iter().all(|r| r.status == status), || {
            format!("list({status:?}) has other statuses")
        })?;
        let mine: Vec<_> = listed
            .iter()
            .filter(|r| ids.contains(&r.run_id))
            .map(|r| &r.run_id)
            .collect();
        ensure(mine == want, || {
            format!("list({status:?}) = {mine:?}, want {want:?}")
        })?;
    }
    let all = s.list_runs(None).await?;
    ensure(
        ids.iter().all(|id| all.iter().any(|r| &r.run_id == id)),
        || "list(None) misses runs".into(),
    )?;
    for id in &ids {
        s.delete_run(id).await?;
    }
    Ok(())
}

/// After `expire_run`, the record and its checkpoints are gone.
pub async fn run_record_expires(b: Backend) -> CaseResult {
    let s = store(&b)?;
    if !s.capabilities().ttl {
        return skip_capability("capability ttl is off");
    }
    let id = run_id("expire");
    s.create_run(NewRun::new(id.clone())).await?;
    let l = s.claim(&id, "w", Duration::from_secs(30)).await?;
    s.checkpoint(&id, l.epoch, "step-1", json!(1)).await?;
    s.set_status(&id, Some(l.epoch), RunStatus::Completed, None)
        .await?;
    ensure(s.expire_run(&id, Duration::from_millis(300)).await?, || {
        "expire_run said the run is missing".into()
    })?;
    eventually("record expires", Duration::from_secs(10), || async {
        Ok(s.get_run(&id).await?.is_none())
    })
    .await?;
    ensure(s.load(&id).await?.is_none(), || {
        "checkpoints outlive the record".into()
    })?;
    let listed = s.list_runs(None).await?;
    ensure(!listed.iter().any(|r| r.run_id == id), || {
        "expired run still listed".into()
    })?;
    ensure(!s.expire_run(&id, Duration::from_secs(1)).await?, || {
        "expire of a missing run returned true".into()
    })
}

/// `finish_run` makes the run terminal and schedules its expiry in the same write (G6): the
/// record is terminal at once, then it and its checkpoints are gone after the TTL. A
/// non-terminal status is refused; a stale epoch is fenced; a terminal run stays final.
pub async fn finishing_a_run_schedules_its_expiry(b: Backend) -> CaseResult {
    let s = store(&b)?;
    if !s.capabilities().ttl {
        return skip_capability("capability ttl is off");
    }
    let id = run_id("finish");
    s.create_run(NewRun::new(id.clone())).await?;
    let l = s.claim(&id, "w", Duration::from_secs(30)).await?;
    s.checkpoint(&id, l.epoch, "step-1", json!(1)).await?;
    let refused = s
        .finish_run(
            &id,
            Some(l.epoch),
            RunStatus::Running,
            Duration::from_secs(1),
        )
        .await;
    ensure(
        refused.is_err_and(|e| e.kind() == ErrorKind::InvalidInput),
        || "finish_run accepted a non-terminal status".into(),
    )?;
    let stale = s
        .finish_run(
            &id,
            Some(l.epoch + 1),
            RunStatus::Completed,
            Duration::from_secs(1),
        )
        .await;
    ensure(stale.is_err_and(|e| e.kind() == ErrorKind::Fenced), || {
        "finish_run with a stale epoch was not fenced".into()
    })?;
    let rec = s
        .finish_run(
            &id,
            Some(l.epoch),
            RunStatus::Completed,
            Duration::from_millis(500),
        )
        .await?;
    ensure(rec.status == RunStatus::Completed, || {
        format!("finish_run returned status {:?}", rec.status)
    })?;
    ensure(rec.owner.is_none(), || "finish_run kept the lease".into())?;
    let again = s
        .finish_run(&id, None, RunStatus::Failed, Duration::from_secs(60))
        .await;
    ensure(
        again.is_err_and(|e| e.kind() == ErrorKind::InvalidState),
        || "a finished run was finished again".into(),
    )?;
    let stored = s.get_run(&id).await?;
    ensure(
        stored.is_none() || stored.is_some_and(|r| r.status == RunStatus::Completed),
        || "the finished run is not completed".into(),
    )?;
    eventually(
        "finished record expires",
        Duration::from_secs(10),
        || async { Ok(s.get_run(&id).await?.is_none()) },
    )
    .await?;
    ensure(s.load(&id).await?.is_none(), || {
        "checkpoints outlive the finished record".into()
    })?;
    let listed = s.list_runs(Some(RunStatus::Completed)).await?;
    ensure(!listed.iter().any(|r| r.run_id == id), || {
        "expired finished run still listed".into()
    })?;
    let missing = s
        .finish_run(&id, None, RunStatus::Completed, Duration::from_secs(1))
        .await;
    ensure(
        missing.is_err_and(|e| e.kind() == ErrorKind::NotFound),
        || "finish_run of a missing run did not say NotFound".into(),
    )
}

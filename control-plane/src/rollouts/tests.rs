//! The rollout saga, decided from what its deployments show, without a store or a clock.

use std::collections::BTreeMap;

use windflow_protocol::Platform;

use super::*;

const V2: u32 = 2;

fn deployment(id: Uuid, state: State, settled: bool, running_version: Option<u32>) -> Deployment {
    Deployment {
        id,
        org_id: Uuid::nil(),
        stack_id: Uuid::nil(),
        target_id: id,
        project: "shop".into(),
        platform: Platform::Docker,
        scale: BTreeMap::new(),
        version: V2,
        desired: Desired::Running,
        generation: 2,
        settled_generation: if settled { 2 } else { 1 },
        state,
        reason: (state == State::Failed).then(|| "No such image: shop:2".into()),
        running_version,
        created_by: "admin".into(),
        created_at_unix_s: 1_000,
        updated_at_unix_s: 1_000,
        job: None,
    }
}

fn part(n: u128, before: Before, state: PartState) -> Part {
    Part { target_id: Uuid::from_u128(n), deployment_id: Uuid::from_u128(n), before, state, reason: None }
}

fn rollout(step: Step, parts: Vec<Part>) -> Rollout {
    Rollout {
        id: Uuid::from_u128(99),
        org_id: Uuid::nil(),
        stack_id: Uuid::nil(),
        version: V2,
        parts,
        step,
        reason: None,
        created_by: "admin".into(),
        created_at_unix_s: 1_000,
        updated_at_unix_s: 1_000,
    }
}

fn both_deploying() -> Rollout {
    rollout(
        Step::Deploying,
        vec![
            part(1, Before::Updated { version: 1 }, PartState::Deploying),
            part(2, Before::Created, PartState::Deploying),
        ],
    )
}

#[test]
fn it_waits_while_parts_deploy_and_is_done_once_every_target_runs_the_version() {
    let r = both_deploying();
    let (a, b) = (
        deployment(Uuid::from_u128(1), State::Running, true, Some(V2)),
        deployment(Uuid::from_u128(2), State::Deploying, false, None),
    );
    let decision = advance(&r, &[Some(&a), Some(&b)], 1_010).expect("a part changed");
    assert_eq!(decision.step, Step::Deploying);
    assert_eq!(decision.parts[0].state, PartState::Running);
    assert!(decision.actions.is_empty());

    let r = Rollout { parts: decision.parts, ..r };
    assert_eq!(advance(&r, &[Some(&a), Some(&b)], 1_010), None, "nothing changed");
    let b = deployment(Uuid::from_u128(2), State::Running, true, Some(V2));
    let done = advance(&r, &[Some(&a), Some(&b)], 1_020).expect("done");
    assert_eq!(done.step, Step::Done);
    assert!(done.parts.iter().all(|p| p.state == PartState::Running));
}

#[test]
fn a_running_but_unsettled_or_older_version_is_not_taken_for_the_rollouts() {
    let r = both_deploying();
    // Still running the previous version while the reconciler has not taken the change up.
    let a = deployment(Uuid::from_u128(1), State::Running, false, Some(1));
    let b = deployment(Uuid::from_u128(2), State::Running, true, Some(1));
    assert_eq!(advance(&r, &[Some(&a), Some(&b)], 1_010), None);
}

#[test]
fn one_failed_part_compensates_every_part_created_ones_removed_updated_ones_put_back() {
    let r = both_deploying();
    let a = deployment(Uuid::from_u128(1), State::Running, true, Some(V2));
    let b = deployment(Uuid::from_u128(2), State::Failed, true, None);
    let decision = advance(&r, &[Some(&a), Some(&b)], 1_010).expect("compensate");
    assert_eq!(decision.step, Step::Compensating);
    assert_eq!(decision.actions, [(0, Action::Deploy { version: 1 }), (1, Action::Remove)]);
    let reason = decision.reason.expect("reason");
    assert!(reason.contains(&Uuid::from_u128(2).to_string()) && reason.contains("No such image"), "{reason}");
    assert_eq!(decision.parts[1].state, PartState::Failed);
}

#[test]
fn past_the_deadline_a_part_still_deploying_compensates_them_all() {
    let r = both_deploying();
    let a = deployment(Uuid::from_u128(1), State::Running, true, Some(V2));
    let b = deployment(Uuid::from_u128(2), State::Deploying, false, None);
    let decision = advance(&r, &[Some(&a), Some(&b)], 1_000 + DEADLINE_S + 1).expect("late");
    assert_eq!(decision.step, Step::Compensating);
    assert!(decision.reason.expect("reason").contains("within 15 minutes"));
}

#[test]
fn compensation_ends_failed_once_every_part_is_back_as_it_was() {
    let mut r = rollout(
        Step::Compensating,
        vec![part(1, Before::Updated { version: 1 }, PartState::Running), part(2, Before::Created, PartState::Failed)],
    );
    r.reason = Some("target 2: No such image".into());
    // The updated part is back on version 1; the created one is not removed yet.
    let a = deployment(Uuid::from_u128(1), State::Running, true, Some(1));
    let b = Deployment {
        desired: Desired::Removed { volumes: true },
        generation: 3,
        ..deployment(Uuid::from_u128(2), State::Removing, false, None)
    };
    let waiting = advance(&r, &[Some(&a), Some(&b)], 1_010).expect("the first part is back");
    assert_eq!(waiting.step, Step::Compensating);
    assert_eq!(waiting.parts[0].state, PartState::Compensated);

    let r = Rollout { parts: waiting.parts, ..r };
    let failed = advance(&r, &[Some(&a), None], 1_020).expect("over");
    assert_eq!(failed.step, Step::Failed);
    assert!(failed.parts.iter().all(|p| p.state == PartState::Compensated));
    assert_eq!(failed.reason.as_deref(), Some("target 2: No such image"));
}

#[test]
fn a_part_that_cannot_be_put_back_is_said_in_the_reason() {
    let r = rollout(Step::Compensating, vec![part(1, Before::Updated { version: 1 }, PartState::Running)]);
    let a = Deployment { version: 1, ..deployment(Uuid::from_u128(1), State::Failed, true, Some(V2)) };
    let failed = advance(&r, &[Some(&a)], 1_010).expect("over");
    assert_eq!(failed.step, Step::Failed);
    assert_eq!(failed.parts[0].state, PartState::CompensationFailed);
    assert!(failed.reason.expect("reason").contains("could not be put back"));
}

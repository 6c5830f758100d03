//! The migration saga as a specification: each step, from what its two deployments show.

use std::collections::BTreeMap;

use windflow_protocol::Platform;

use super::*;

const SOURCE: Uuid = Uuid::from_u128(1);
const DESTINATION: Uuid = Uuid::from_u128(2);

fn migration(step: Step, remove_source: bool) -> Migration {
    Migration {
        id: Uuid::from_u128(9),
        org_id: Uuid::nil(),
        source_id: SOURCE,
        destination_id: DESTINATION,
        remove_source,
        step,
        reason: None,
        created_by: "admin".into(),
        created_at_unix_s: 1_000,
        updated_at_unix_s: 1_000,
    }
}

fn deployment(id: Uuid, state: State, settled: bool) -> Deployment {
    Deployment {
        id,
        org_id: Uuid::nil(),
        stack_id: Uuid::nil(),
        target_id: id,
        project: "shop".into(),
        platform: Platform::Docker,
        scale: BTreeMap::new(),
        version: 1,
        desired: Desired::Running,
        generation: 2,
        settled_generation: if settled { 2 } else { 1 },
        state,
        reason: (state == State::Failed).then(|| "No such image: shop:2".into()),
        running_version: None,
        created_by: "admin".into(),
        created_at_unix_s: 1_000,
        updated_at_unix_s: 1_000,
        job: None,
    }
}

fn step(decision: Option<Decision>) -> Option<(Step, Option<Action>)> {
    decision.map(|d| (d.step, d.action))
}

#[test]
fn it_waits_while_the_destination_deploys() {
    let source = deployment(SOURCE, State::Running, true);
    for state in [State::Pending, State::Deploying, State::Running, State::Failed] {
        let destination = deployment(DESTINATION, state, false);
        assert_eq!(advance(&migration(Step::Deploying, true), Some(&source), Some(&destination), 1_010), None);
    }
}

#[test]
fn a_running_destination_removes_the_source_or_finishes() {
    let source = deployment(SOURCE, State::Running, true);
    let destination = deployment(DESTINATION, State::Running, true);
    let removing = advance(&migration(Step::Deploying, true), Some(&source), Some(&destination), 1_010);
    assert_eq!(step(removing), Some((Step::RemovingSource, Some(Action::RemoveSource))));
    let kept = advance(&migration(Step::Deploying, false), Some(&source), Some(&destination), 1_010);
    assert_eq!(step(kept), Some((Step::Done, None)));
}

#[test]
fn a_failed_destination_is_removed_and_the_failure_is_told() {
    let source = deployment(SOURCE, State::Running, true);
    let destination = deployment(DESTINATION, State::Failed, true);
    let decision = advance(&migration(Step::Deploying, true), Some(&source), Some(&destination), 1_010).expect("acts");
    assert_eq!((decision.step, decision.action), (Step::Compensating, Some(Action::RemoveDestination)));
    assert!(decision.message.contains("No such image: shop:2") && decision.message.contains("source is untouched"));
}

#[test]
fn a_destination_that_never_runs_is_given_up_after_the_deadline() {
    let source = deployment(SOURCE, State::Running, true);
    let destination = deployment(DESTINATION, State::Pending, false);
    let late = 1_000 + DEADLINE_S + 1;
    let decision = advance(&migration(Step::Deploying, true), Some(&source), Some(&destination), late);
    assert_eq!(step(decision), Some((Step::Compensating, Some(Action::RemoveDestination))));
}

#[test]
fn compensation_ends_when_the_destination_is_gone() {
    let mut failing = migration(Step::Compensating, true);
    failing.reason = Some("the destination failed: No such image".into());
    let source = deployment(SOURCE, State::Running, true);
    let removing = deployment(DESTINATION, State::Removing, false);
    assert_eq!(advance(&failing, Some(&source), Some(&removing), 1_010), None);
    let gone = deployment(DESTINATION, State::Removed, true);
    let decision = advance(&failing, Some(&source), Some(&gone), 1_010).expect("acts");
    assert_eq!(
        (decision.step, decision.reason.as_deref()),
        (Step::Failed, Some("the destination failed: No such image"))
    );
}

#[test]
fn a_source_that_cannot_be_removed_still_ends_the_migration_with_the_reason() {
    let destination = deployment(DESTINATION, State::Running, true);
    let mut source = deployment(SOURCE, State::Failed, true);
    source.desired = Desired::Removed { volumes: false };
    let decision = advance(&migration(Step::RemovingSource, true), Some(&source), Some(&destination), 1_010);
    let decision = decision.expect("acts");
    assert_eq!((decision.step, decision.level), (Step::Done, Level::Warning));
    assert!(decision.reason.is_some_and(|r| r.contains("could not be removed")));
    let gone = deployment(SOURCE, State::Removed, true);
    let done = advance(&migration(Step::RemovingSource, true), Some(&gone), Some(&destination), 1_010);
    assert_eq!(step(done), Some((Step::Done, None)));
}

#[test]
fn finished_migrations_do_nothing() {
    for over in [Step::Done, Step::Failed] {
        assert_eq!(advance(&migration(over, true), None, None, 1_010), None);
    }
}

//! The lifecycle state machine, as a pure function: no I/O, no memory, no time.
//!
//! ```text
//! Launched ──Activate──▶ Active ◀──Activate/Pause──▶ Paused
//!     │                    │                            │
//!     └──────Drain─────────┴──────────Drain─────────────┘
//!                          ▼
//!                      Draining ──Drained──▶ Terminated
//! any live state ──Terminate──▶ Terminated      any live state ──Fault──▶ Faulted
//! ```
//!
//! The host checks every command here before writing it to the control block, so an
//! invalid request comes back as an error and never reaches a kernel. Kernels apply the
//! same function to the commands they read and to their own events.

use crate::abi::{Command, State};

/// Something that moves a kernel between states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// The host issued a command.
    Command(Command),
    /// A draining kernel found its inboxes empty.
    Drained,
    /// The kernel faulted (handler panic, device error, watchdog).
    Fault,
    /// The host restarts a stopped kernel with its configuration.
    Restart,
}

/// A transition the state machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", explain(*.from, *.event))]
pub struct LifecycleError {
    /// The state the kernel was in.
    pub from: State,
    /// What was asked of it.
    pub event: Event,
}

fn explain(from: State, event: Event) -> String {
    let what = match event {
        Event::Command(Command::Activate) => "activate",
        Event::Command(Command::Pause) => "deactivate",
        Event::Command(Command::Drain) => "drain",
        Event::Command(Command::Terminate) => "terminate",
        Event::Command(Command::None) => "issue an empty command to",
        Event::Drained => "finish draining",
        Event::Fault => "fault",
        Event::Restart => "restart",
    };
    let hint = match (from, event) {
        (State::Terminated, Event::Command(Command::Terminate)) => {
            "it is already terminated, so there is nothing to stop; to run it again, restart it \
             (Runtime::restart; a kernel of a device group restarts with its group) or launch \
             it again"
        }
        (State::Terminated, _) => {
            "it is terminated; restart it (Runtime::restart; a kernel of a device group restarts \
             with its group) or launch it again"
        }
        (State::Faulted, _) => {
            "it is faulted; terminate it to collect its messages, or restart it (Runtime::restart)"
        }
        (State::Draining, Event::Command(Command::Drain)) => {
            "it is already draining; wait for the drain to finish"
        }
        (State::Draining, Event::Restart) => {
            "it is still draining; wait for the drain to finish (or terminate it), then restart it"
        }
        (State::Draining, _) => {
            "it is draining and stops once its inbox is empty; wait for the drain to finish, or \
             terminate it"
        }
        (State::Launched | State::Active | State::Paused, Event::Restart) => {
            "only a stopped (terminated or faulted) kernel can be restarted and this one is not \
             stopped; drain or terminate it first, then restart it"
        }
        (State::Launched | State::Active | State::Paused, Event::Drained) => {
            "only a draining kernel can finish draining; drain it first"
        }
        (State::Launched | State::Active | State::Paused, _) => {
            "an empty command does nothing; activate, deactivate, drain or terminate it instead"
        }
    };
    format!("cannot {what} a kernel in state {from:?}: {hint}")
}

/// The state's name in lower case, as metrics labels and messages spell it.
pub const fn state_name(state: State) -> &'static str {
    match state {
        State::Launched => "launched",
        State::Active => "active",
        State::Paused => "paused",
        State::Draining => "draining",
        State::Terminated => "terminated",
        State::Faulted => "faulted",
    }
}

/// Whether a state is final until a restart.
pub const fn is_stopped(state: State) -> bool {
    matches!(state, State::Terminated | State::Faulted)
}

/// Whether a kernel in `state` takes messages from its inboxes.
pub const fn processes_messages(state: State) -> bool {
    matches!(state, State::Active | State::Draining)
}

/// Whether a kernel in `state` accepts new messages from senders.
pub const fn accepts_messages(state: State) -> bool {
    matches!(state, State::Launched | State::Active | State::Paused)
}

/// The state after `event` in state `from`.
///
/// `Activate` on an active kernel and `Pause` on a paused one are accepted and change
/// nothing, so callers need not track the state to be idempotent.
///
/// # Errors
/// [`LifecycleError`] for a transition the diagram above does not have, for example
/// draining twice, or any command but `Terminate` to a faulted kernel.
pub const fn transition(from: State, event: Event) -> Result<State, LifecycleError> {
    use Command as C;
    use State as S;
    let to = match (from, event) {
        (S::Launched | S::Active | S::Paused, Event::Command(C::Activate)) => S::Active,
        (S::Launched | S::Active | S::Paused, Event::Command(C::Pause)) => S::Paused,
        (S::Launched | S::Active | S::Paused, Event::Command(C::Drain)) => S::Draining,
        (
            S::Launched | S::Active | S::Paused | S::Draining | S::Faulted,
            Event::Command(C::Terminate),
        )
        | (S::Draining, Event::Drained) => S::Terminated,
        (S::Launched | S::Active | S::Paused | S::Draining, Event::Fault) => S::Faulted,
        (S::Terminated | S::Faulted, Event::Restart) => S::Launched,
        _ => return Err(LifecycleError { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [State; 6] = State::ALL;
    const EVENTS: [Event; 9] = [
        Event::Command(Command::None),
        Event::Command(Command::Activate),
        Event::Command(Command::Pause),
        Event::Command(Command::Drain),
        Event::Command(Command::Terminate),
        Event::Drained,
        Event::Fault,
        Event::Restart,
        Event::Command(Command::Activate),
    ];

    #[test]
    fn every_refusal_gives_advice_that_fits_the_state() {
        for from in STATES {
            for event in EVENTS {
                let Err(err) = transition(from, event) else {
                    continue;
                };
                let text = err.to_string();
                assert!(
                    !text.contains("only a running kernel"),
                    "{from:?} {event:?}: {text}"
                );
                if event == Event::Restart && !is_stopped(from) {
                    assert!(
                        text.contains("only a stopped") || text.contains("still draining"),
                        "{from:?}: {text}"
                    );
                    assert!(text.contains("then restart it"), "{from:?}: {text}");
                }
            }
        }
        let restart_active = transition(State::Active, Event::Restart).unwrap_err();
        assert_eq!(
            restart_active.to_string(),
            "cannot restart a kernel in state Active: only a stopped (terminated or faulted) \
             kernel can be restarted and this one is not stopped; drain or terminate it first, \
             then restart it"
        );
    }

    #[test]
    fn every_transition_matches_the_table() {
        use Command as C;
        use State as S;
        let expected = |from: S, event: Event| -> Option<S> {
            match event {
                Event::Command(C::Activate)
                    if matches!(from, S::Launched | S::Active | S::Paused) =>
                {
                    Some(S::Active)
                }
                Event::Command(C::Pause) if matches!(from, S::Launched | S::Active | S::Paused) => {
                    Some(S::Paused)
                }
                Event::Command(C::Drain) if matches!(from, S::Launched | S::Active | S::Paused) => {
                    Some(S::Draining)
                }
                Event::Command(C::Terminate) if from != S::Terminated => Some(S::Terminated),
                Event::Drained if from == S::Draining => Some(S::Terminated),
                Event::Fault if !is_stopped(from) => Some(S::Faulted),
                Event::Restart if is_stopped(from) => Some(S::Launched),
                _ => None,
            }
        };
        let mut checked = 0;
        for from in STATES {
            for event in EVENTS {
                let got = transition(from, event);
                if let Some(to) = expected(from, event) {
                    assert_eq!(got, Ok(to), "{from:?} + {event:?}");
                } else {
                    let err = got.expect_err("transition should be refused");
                    assert_eq!((err.from, err.event), (from, event));
                    assert!(err.to_string().contains("cannot"), "{err}");
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 54);
    }

    #[test]
    fn draining_twice_is_an_error_that_says_what_to_do() {
        let err = transition(State::Draining, Event::Command(Command::Drain)).unwrap_err();
        assert!(err.to_string().contains("already draining"), "{err}");
        let err = transition(State::Terminated, Event::Command(Command::Drain)).unwrap_err();
        assert!(err.to_string().contains("terminated"), "{err}");
    }

    #[test]
    fn faulted_kernels_only_terminate_or_restart() {
        for event in EVENTS {
            let ok = transition(State::Faulted, event).is_ok();
            assert_eq!(
                ok,
                matches!(event, Event::Command(Command::Terminate) | Event::Restart),
                "{event:?}"
            );
        }
    }

    #[test]
    fn predicates_agree_with_states() {
        for state in STATES {
            assert_eq!(
                is_stopped(state),
                matches!(state, State::Terminated | State::Faulted)
            );
            assert!(!(processes_messages(state) && is_stopped(state)));
            assert!(!(accepts_messages(state) && state == State::Draining));
        }
    }
}

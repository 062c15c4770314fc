//! The bank example's rules, written with the test kit: deciders with given / when /
//! then, and whole flows through the repository.

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../examples/bank/domain.rs"]
#[allow(dead_code, unreachable_pub)]
mod domain;

use cairn_es::testkit::{TestFlow, given};
use cairn_es::{CommandError, Event};
use domain::{AccountError, AccountEvent, Bank, Command, Status};

fn opened() -> AccountEvent {
    AccountEvent::Opened {
        owner: "Alice".to_owned(),
    }
}

#[test]
fn an_account_opens_once() {
    given::<Bank>([])
        .when(Command::Open {
            owner: "Alice".to_owned(),
        })
        .then([opened()]);
    given::<Bank>([opened()])
        .when(Command::Open {
            owner: "Bob".to_owned(),
        })
        .then_error(AccountError::AlreadyOpened);
}

#[test]
fn nothing_happens_to_an_account_never_opened() {
    given::<Bank>([])
        .when(Command::Deposit { amount: 5 })
        .then_error(AccountError::NotOpen);
    given::<Bank>([])
        .when(Command::Close)
        .then_error(AccountError::NotOpen);
}

#[test]
fn deposits_add_to_the_balance() {
    given::<Bank>([opened()])
        .when(Command::Deposit { amount: 70 })
        .then([AccountEvent::Deposited {
            amount: 70,
            balance: 70,
        }]);
    given::<Bank>([
        opened(),
        AccountEvent::Deposited {
            amount: 70,
            balance: 70,
        },
    ])
    .when(Command::Deposit { amount: 5 })
    .then([AccountEvent::Deposited {
        amount: 5,
        balance: 75,
    }]);
    given::<Bank>([opened()])
        .when(Command::Deposit { amount: 0 })
        .then_error(AccountError::ZeroAmount);
    given::<Bank>([
        opened(),
        AccountEvent::Deposited {
            amount: u64::MAX,
            balance: u64::MAX,
        },
    ])
    .when(Command::Deposit { amount: 1 })
    .then_error(AccountError::Overflow);
}

#[test]
fn withdrawals_never_overdraw() {
    let funded = [
        opened(),
        AccountEvent::Deposited {
            amount: 50,
            balance: 50,
        },
    ];
    given::<Bank>(funded.clone())
        .when(Command::Withdraw { amount: 50 })
        .then([AccountEvent::Withdrawn {
            amount: 50,
            balance: 0,
        }]);
    given::<Bank>(funded)
        .when(Command::Withdraw { amount: 51 })
        .then_error(AccountError::InsufficientFunds {
            balance: 50,
            requested: 51,
        });
}

#[test]
fn only_an_empty_account_closes_and_a_closed_one_refuses_everything() {
    given::<Bank>([
        opened(),
        AccountEvent::Deposited {
            amount: 1,
            balance: 1,
        },
    ])
    .when(Command::Close)
    .then_error(AccountError::NotEmpty(1));
    given::<Bank>([opened()])
        .when(Command::Close)
        .then([AccountEvent::Closed]);
    for command in [
        Command::Deposit { amount: 1 },
        Command::Withdraw { amount: 1 },
        Command::Close,
    ] {
        given::<Bank>([opened(), AccountEvent::Closed])
            .when(command)
            .then_error(AccountError::Closed);
    }
}

#[test]
fn stored_type_names_do_not_follow_rust_names() {
    let names: Vec<&str> = AccountEvent::event_types().iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        [
            "AccountOpened",
            "MoneyDeposited",
            "MoneyWithdrawn",
            "AccountClosed"
        ]
    );
    assert!(AccountEvent::event_types().iter().all(|t| t.version == 1));
}

#[tokio::test]
async fn a_whole_account_life_through_the_repository() {
    let flow = TestFlow::<Bank>::new().given("alice", [opened()]).await;
    flow.when("alice", Command::Deposit { amount: 100 })
        .await
        .then([AccountEvent::Deposited {
            amount: 100,
            balance: 100,
        }]);
    flow.when("alice", Command::Withdraw { amount: 130 })
        .await
        .then_error(|error| {
            matches!(
                error,
                CommandError::Rejected(AccountError::InsufficientFunds { balance: 100, .. })
            )
        });
    let executed = flow
        .when("alice", Command::Withdraw { amount: 100 })
        .await
        .then([AccountEvent::Withdrawn {
            amount: 100,
            balance: 0,
        }]);
    assert_eq!(executed.revision.map(|r| r.0), Some(2));
    flow.when("alice", Command::Close)
        .await
        .then([AccountEvent::Closed]);
    let loaded = flow.repository().load("alice").await.unwrap();
    assert_eq!(loaded.state.status, Status::Closed);
    assert_eq!(loaded.state.owner, "Alice");
}

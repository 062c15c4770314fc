//! A bank on Cairn's embedded store: accounts as event-sourced aggregates.
//!
//! ```text
//! cargo run --example bank -- open alice "Alice Smith"
//! cargo run --example bank -- deposit alice 100
//! cargo run --example bank -- withdraw alice 30
//! cargo run --example bank -- show alice
//! cargo run --example bank -- withdraw alice 500     # refused: insufficient funds
//! ```
//!
//! The data lives in `./bank-data` (or `$BANK_DATA`); every command is loaded, decided
//! and appended through a [`Repository`], with a snapshot every 100 events.

// The domain is shared with the tests, which reach its items from outside this binary.
#[allow(unreachable_pub)]
mod domain;

use std::process::ExitCode;
use std::sync::Arc;

use cairn_es::{CommandError, Repository, SnapshotPolicy};
use cairn_log::{LogOptions, LogStore};
use domain::{Bank, Command};

const USAGE: &str = "usage: bank (open <id> <owner> | deposit <id> <amount> | withdraw <id> <amount> | close <id> | show <id>)";

fn parse(args: &[String]) -> Result<(String, Option<Command>), String> {
    let amount = |text: &str| {
        text.parse::<u64>()
            .map_err(|_| format!("{text:?} is not an amount (a whole number)"))
    };
    match args {
        [verb, id, owner] if verb == "open" => Ok((
            id.clone(),
            Some(Command::Open {
                owner: owner.clone(),
            }),
        )),
        [verb, id, value] if verb == "deposit" => Ok((
            id.clone(),
            Some(Command::Deposit {
                amount: amount(value)?,
            }),
        )),
        [verb, id, value] if verb == "withdraw" => Ok((
            id.clone(),
            Some(Command::Withdraw {
                amount: amount(value)?,
            }),
        )),
        [verb, id] if verb == "close" => Ok((id.clone(), Some(Command::Close))),
        [verb, id] if verb == "show" => Ok((id.clone(), None)),
        _ => Err(USAGE.to_owned()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (id, command) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let dir = std::env::var("BANK_DATA").unwrap_or_else(|_| "bank-data".to_owned());
    let store = match LogStore::open(&dir, LogOptions::default()) {
        Ok(store) => Arc::new(store),
        Err(error) => {
            eprintln!("cannot open the bank's store in {dir}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let repository = match Repository::<Bank, LogStore>::builder(Arc::clone(&store))
        .snapshots(SnapshotPolicy::every(100))
        .build()
        .await
    {
        Ok(repository) => repository,
        Err(error) => {
            eprintln!("the bank's store cannot be used: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match command {
        None => match repository.load(&id).await {
            Ok(loaded) => {
                println!(
                    "account {id}: {:?}, owner {:?}, balance {} (revision {})",
                    loaded.state.status,
                    loaded.state.owner,
                    loaded.state.balance,
                    loaded
                        .revision
                        .map_or_else(|| "none".to_owned(), |r| r.to_string())
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("cannot load account {id}: {error}");
                ExitCode::FAILURE
            }
        },
        Some(command) => match repository.execute(&id, command).await {
            Ok(executed) => {
                for event in &executed.events {
                    println!("{event:?}");
                }
                println!("balance {}", executed.state.balance);
                ExitCode::SUCCESS
            }
            Err(CommandError::Rejected(reason)) => {
                eprintln!("refused: {reason}");
                ExitCode::from(1)
            }
            Err(error) => {
                eprintln!("failed: {error}");
                ExitCode::FAILURE
            }
        },
    };
    if let Err(error) = store.close().await {
        eprintln!("closing the store failed: {error}");
        return ExitCode::FAILURE;
    }
    code
}

//! The bank's domain: accounts that open, take deposits, allow withdrawals without
//! overdraft, and close once empty.

use cairn_es::{Decider, Event};
use serde::{Deserialize, Serialize};

/// What happens to an account. Stored type names are fixed by `name`, so the Rust
/// variants can be renamed freely.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
#[event(version = 1)]
pub enum AccountEvent {
    /// The account was opened for `owner`.
    #[event(name = "AccountOpened")]
    Opened { owner: String },
    /// Money came in; `balance` is the balance after it.
    #[event(name = "MoneyDeposited")]
    Deposited { amount: u64, balance: u64 },
    /// Money went out; `balance` is the balance after it.
    #[event(name = "MoneyWithdrawn")]
    Withdrawn { amount: u64, balance: u64 },
    /// The account was closed.
    #[event(name = "AccountClosed")]
    Closed,
}

/// Where an account is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Not opened yet.
    #[default]
    New,
    /// Open for business.
    Open,
    /// Closed for good.
    Closed,
}

/// An account's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Where it is in its life.
    pub status: Status,
    /// Who owns it.
    pub owner: String,
    /// What is in it.
    pub balance: u64,
}

/// What an account can be asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Open it for `owner`.
    Open { owner: String },
    /// Put `amount` in.
    Deposit { amount: u64 },
    /// Take `amount` out.
    Withdraw { amount: u64 },
    /// Close it.
    Close,
}

/// Why an account refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Opening an account that is open or closed.
    #[error("the account was opened already")]
    AlreadyOpened,
    /// Anything but opening, on an account never opened.
    #[error("the account is not open")]
    NotOpen,
    /// Anything on a closed account.
    #[error("the account is closed")]
    Closed,
    /// A deposit or withdrawal of nothing.
    #[error("amounts must be positive")]
    ZeroAmount,
    /// A withdrawal of more than the balance.
    #[error("insufficient funds: the balance is {balance}, {requested} was asked for")]
    InsufficientFunds { balance: u64, requested: u64 },
    /// Closing an account that still holds money.
    #[error("the balance of {0} must be withdrawn before closing")]
    NotEmpty(u64),
    /// A deposit that would overflow the balance.
    #[error("the balance would overflow")]
    Overflow,
}

/// The account decider.
pub struct Bank;

impl Decider for Bank {
    const CATEGORY: &'static str = "account";
    type State = Account;
    type Command = Command;
    type Event = AccountEvent;
    type Error = AccountError;

    fn decide(account: &Account, command: &Command) -> Result<Vec<AccountEvent>, AccountError> {
        match (account.status, command) {
            (Status::New, Command::Open { owner }) => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
            }]),
            (_, Command::Open { .. }) => Err(AccountError::AlreadyOpened),
            (Status::New, _) => Err(AccountError::NotOpen),
            (Status::Closed, _) => Err(AccountError::Closed),
            (Status::Open, Command::Deposit { amount: 0 } | Command::Withdraw { amount: 0 }) => {
                Err(AccountError::ZeroAmount)
            }
            (Status::Open, Command::Deposit { amount }) => {
                let balance = account
                    .balance
                    .checked_add(*amount)
                    .ok_or(AccountError::Overflow)?;
                Ok(vec![AccountEvent::Deposited {
                    amount: *amount,
                    balance,
                }])
            }
            (Status::Open, Command::Withdraw { amount }) => {
                let balance = account.balance.checked_sub(*amount).ok_or(
                    AccountError::InsufficientFunds {
                        balance: account.balance,
                        requested: *amount,
                    },
                )?;
                Ok(vec![AccountEvent::Withdrawn {
                    amount: *amount,
                    balance,
                }])
            }
            (Status::Open, Command::Close) if account.balance > 0 => {
                Err(AccountError::NotEmpty(account.balance))
            }
            (Status::Open, Command::Close) => Ok(vec![AccountEvent::Closed]),
        }
    }

    fn evolve(mut account: Account, event: &AccountEvent) -> Account {
        match event {
            AccountEvent::Opened { owner } => {
                account.status = Status::Open;
                account.owner.clone_from(owner);
            }
            AccountEvent::Deposited { balance, .. } | AccountEvent::Withdrawn { balance, .. } => {
                account.balance = *balance;
            }
            AccountEvent::Closed => account.status = Status::Closed,
        }
        account
    }
}

use cairn_es::Event;

#[derive(Event)]
enum Account {
    #[event(version = 1)]
    Opened,
    #[event(name = "account.deposited")]
    Deposited { amount: u64 },
    Closed,
}

fn main() {}

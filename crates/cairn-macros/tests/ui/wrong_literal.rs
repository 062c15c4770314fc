use cairn_es::Event;

#[derive(Event)]
enum Account {
    #[event(name = account_opened, version = 1)]
    Opened,
    #[event(name = 5, version = 1)]
    Deposited,
    #[event(version = "2")]
    Withdrawn,
    #[event(version = 2.0)]
    Frozen,
    #[event(version = 4294967296)]
    Closed,
    #[event(version = -1)]
    Reopened,
}

fn main() {}

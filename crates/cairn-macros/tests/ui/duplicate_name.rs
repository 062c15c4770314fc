use cairn_es::Event;

#[derive(Event)]
#[event(version = 1)]
enum Account {
    #[event(name = "account.opened")]
    Opened,
    // Renamed in Rust, but the type name was kept: one of them must change.
    #[event(name = "account.opened")]
    Reopened,
}

#[derive(Event)]
#[event(version = 1)]
enum Door {
    Opened,
    // Another variant's default name.
    #[event(name = "Opened")]
    Unlocked,
}

fn main() {}

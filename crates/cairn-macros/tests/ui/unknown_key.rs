use cairn_es::Event;

#[derive(Event)]
#[event(version = 1, name = "account")]
enum Account {
    #[event(rename = "account.opened")]
    Opened,
    #[event(version = 2, schema = 3)]
    Closed,
}

#[derive(Event)]
#[event(prefix = "door.", version = 1)]
enum Door {
    Opened,
}

fn main() {}

use cairn_es::Event;

#[derive(Event)]
#[event(version = 1)]
enum Account {
    #[event(name = "")]
    Opened,
    #[event(name = "account\nclosed")]
    Closed,
    #[event(name = "account.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")]
    Renamed,
}

#[derive(Event)]
#[event(version = 1)]
enum Empty {}

fn main() {}

use cairn_es::Event;

#[derive(Event)]
#[event(version = 1)]
enum Account {
    Opened(String),
    Transferred(String, String, u64),
    Closed(),
}

fn main() {}

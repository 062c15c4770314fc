use cairn_es::Event;

#[derive(Event)]
#[event(version = 0)]
enum Account {
    #[event(version = 0)]
    Opened,
}

fn main() {}

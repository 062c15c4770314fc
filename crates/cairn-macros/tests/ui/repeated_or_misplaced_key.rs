use cairn_es::Event;

#[derive(Event)]
#[event(version = 1)]
#[event(version = 2)]
enum Account {
    #[event(name = "account.opened", name = "account.created")]
    Opened,
    Closed {
        #[event(name = "reason")]
        reason: String,
    },
}

fn main() {}

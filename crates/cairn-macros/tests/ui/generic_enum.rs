use cairn_es::Event;

#[derive(Event)]
#[event(version = 1)]
enum Changed<T> {
    Set(T),
    Cleared,
}

fn main() {}

use cairn_es::Event;

#[derive(Event)]
struct Opened {
    owner: String,
}

#[derive(Event)]
union Bits {
    whole: u32,
    halves: [u16; 2],
}

fn main() {}

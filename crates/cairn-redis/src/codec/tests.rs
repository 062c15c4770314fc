use rand::prelude::*;

use super::*;

/// The arguments after `XADD key *`, as the server hands them back.
fn as_reply(command: &Cmd) -> Vec<Value> {
    command
        .args_iter()
        .skip(3)
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => Value::BulkString(bytes.to_vec()),
            _ => Value::Nil,
        })
        .collect()
}

fn written(message: &Message) -> Cmd {
    xadd("k", None, message, &mut Vec::new())
}

fn bulk(bytes: &[u8]) -> Value {
    Value::BulkString(bytes.to_vec())
}

fn full() -> Message {
    Message::new("order.placed", Bytes::from_static(&[0, 255, 10]))
        .with_key("order-7")
        .with_source("/orders")
        .with_content_type("application/octet-stream")
        .with_header("traceparent", "00-abc-def-01")
        .with_header("x-text", "héllo")
}

fn meta_of(message: &Message) -> Vec<u8> {
    let mut meta = Vec::new();
    encode_meta(message, &mut meta);
    meta
}

#[test]
fn every_field_of_a_message_round_trips() {
    let message = full();
    let entry_id = EntryId { ms: 5, seq: 1 };
    assert_eq!(
        read_message(entry_id, as_reply(&written(&message))),
        Ok(message)
    );
}

#[test]
fn an_entry_has_two_fields_meta_then_the_payload_as_it_is() {
    let message = full();
    let reply = as_reply(&written(&message));
    assert_eq!(reply.len(), 4);
    assert_eq!(reply[0], bulk(b"cairn-meta"));
    assert_eq!(reply[1], bulk(&meta_of(&message)));
    assert_eq!(reply[2], bulk(b"payload"));
    assert_eq!(reply[3], bulk(&[0, 255, 10]));
}

#[test]
fn an_xadd_names_the_stream_and_caps_it_when_asked() {
    let message = Message::new("t", Bytes::from_static(b"p"));
    let args = |command: &Cmd| -> Vec<Vec<u8>> {
        command
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => Vec::new(),
            })
            .collect()
    };
    let meta = meta_of(&message);
    let plain = args(&xadd("s", None, &message, &mut Vec::new()));
    let expected: Vec<&[u8]> = vec![b"XADD", b"s", b"*", b"cairn-meta", &meta, b"payload", b"p"];
    assert_eq!(plain, expected);
    let capped = args(&xadd("s", Some(1000), &message, &mut vec![7; 3]));
    let expected: Vec<&[u8]> = vec![
        b"XADD",
        b"s",
        b"MAXLEN",
        b"~",
        b"1000",
        b"*",
        b"cairn-meta",
        &meta,
        b"payload",
        b"p",
    ];
    assert_eq!(capped, expected);
}

#[test]
fn a_message_without_a_key_or_headers_round_trips() {
    let message = Message::new("t", Bytes::new()).with_content_type("");
    let read = read_message(EntryId { ms: 1, seq: 0 }, as_reply(&written(&message))).unwrap();
    assert_eq!(read, message);
    assert_eq!(read.key, None);
}

#[test]
fn an_empty_key_is_not_a_missing_one() {
    let message = Message::new("t", Bytes::new()).with_key("");
    let read = read_message(EntryId { ms: 1, seq: 0 }, as_reply(&written(&message))).unwrap();
    assert_eq!(read.key.as_deref(), Some(""));
}

#[test]
fn the_layout_of_version_1_is_frozen() {
    let id = Uuid::parse_str("01890a5d-ac96-774b-bcce-b302099a8057").unwrap();
    let message = Message::new("t", Bytes::new()).with_id(id).with_key("k");
    let mut expected = vec![1];
    expected.extend([
        0x01, 0x89, 0x0a, 0x5d, 0xac, 0x96, 0x77, 0x4b, 0xbc, 0xce, 0xb3, 0x02, 0x09, 0x9a, 0x80,
        0x57,
    ]);
    expected.extend([0x01, 0x01, b't', 0x00, 0x10]);
    expected.extend(b"application/json");
    expected.extend([0x01, b'k', 0x00]);
    assert_eq!(meta_of(&message), expected);

    let with_headers = Message::new("t", Bytes::new())
        .with_id(id)
        .with_content_type("")
        .with_source("s")
        .with_header("b", "2")
        .with_header("a", "1");
    let mut expected = vec![1];
    expected.extend(id.as_bytes());
    expected.extend([0x00, 0x01, b't', 0x01, b's', 0x00, 0x02]);
    expected.extend([0x01, b'a', 0x01, b'1', 0x01, b'b', 0x01, b'2']);
    assert_eq!(meta_of(&with_headers), expected);
    assert_eq!(decode_meta(&expected, Bytes::new()), Ok(with_headers));
}

#[test]
fn lengths_of_128_bytes_and_more_take_several_varint_bytes() {
    let long = "x".repeat(300);
    let message = Message::new(long.clone(), Bytes::new()).with_header(long.clone(), long);
    let meta = meta_of(&message);
    // 300 = 0b10_0101100: 0xac (low seven bits, more follow), then 0x02.
    assert_eq!(&meta[18..20], &[0xac, 0x02]);
    assert_eq!(decode_meta(&meta, Bytes::new()), Ok(message));
}

#[test]
fn an_unknown_version_is_refused_naming_it() {
    let mut meta = meta_of(&full());
    for version in [0, 2, 255] {
        meta[0] = version;
        assert_eq!(
            decode_meta(&meta, Bytes::new()),
            Err(MetaError::UnknownVersion { version })
        );
    }
    let error = MetaError::UnknownVersion { version: 2 };
    assert_eq!(
        error.to_string(),
        "metadata version 2 is unknown here (this reader knows version 1)"
    );
}

#[test]
fn an_entry_with_an_unreadable_meta_field_is_refused_with_its_id() {
    let entry = Value::Array(vec![
        bulk(b"7-3"),
        Value::Array(vec![
            bulk(b"cairn-meta"),
            bulk(&[9, 9, 9]),
            bulk(b"payload"),
            bulk(b"x"),
        ]),
    ]);
    let refused = read_entry(entry).unwrap().unwrap_err();
    assert_eq!(refused.id, EntryId { ms: 7, seq: 3 });
    assert_eq!(refused.reason, MetaError::UnknownVersion { version: 9 });
}

#[test]
fn unknown_flags_trailing_bytes_and_repeated_headers_are_malformed() {
    let mut flagged = meta_of(&full());
    flagged[17] |= 0x02;
    assert_eq!(
        decode_meta(&flagged, Bytes::new()),
        Err(MetaError::Malformed {
            offset: 17,
            problem: "unknown flags are set"
        })
    );

    let mut trailing = meta_of(&full());
    trailing.push(0);
    assert!(matches!(
        decode_meta(&trailing, Bytes::new()),
        Err(MetaError::Malformed {
            problem: "bytes follow the last header",
            ..
        })
    ));

    let mut twice = meta_of(&Message::new("t", Bytes::new()));
    twice.pop();
    twice.extend([0x02, 0x01, b'a', 0x00, 0x01, b'a', 0x00]);
    assert!(matches!(
        decode_meta(&twice, Bytes::new()),
        Err(MetaError::Malformed {
            problem: "a header name appears twice",
            ..
        })
    ));
}

#[test]
fn oversized_numbers_and_bad_utf8_are_malformed() {
    let head = {
        let mut head = meta_of(&Message::new("", Bytes::new()));
        head.truncate(18);
        head
    };
    // The tail after the flags (byte 18 on), what is wrong, and where.
    let cases: [(&[u8], &str, usize); 4] = [
        (
            &[
                0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
            ],
            "a number is longer than 10 bytes",
            18,
        ),
        (
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            "a number is larger than 64 bits",
            18,
        ),
        (&[0xff, 0xff, 0xff, 0xff, 0x0f], "it ends inside a text", 23),
        (&[0x02, 0xc3, 0x28], "a text is not UTF-8", 18),
    ];
    for (tail, problem, offset) in cases {
        let mut meta = head.clone();
        meta.extend(tail);
        assert_eq!(
            decode_meta(&meta, Bytes::new()),
            Err(MetaError::Malformed { offset, problem }),
            "{tail:?}"
        );
    }
}

#[test]
fn every_truncation_of_a_meta_field_is_malformed() {
    let meta = meta_of(&full());
    for len in 0..meta.len() {
        assert!(
            matches!(
                decode_meta(&meta[..len], Bytes::new()),
                Err(MetaError::Malformed { .. })
            ),
            "cut at {len}"
        );
    }
}

/// A message with random attributes, some empty, some long, some not ASCII.
fn random_message(rng: &mut StdRng) -> Message {
    let text = |rng: &mut StdRng| -> String {
        let len = match rng.random_range(0..4) {
            0 => 0,
            1 => rng.random_range(1..8),
            2 => rng.random_range(100..300),
            _ => rng.random_range(1..40),
        };
        (0..len)
            .map(|_| {
                if rng.random_bool(0.1) {
                    char::from_u32(rng.random_range(0x80..0x3000)).unwrap_or('é')
                } else {
                    char::from(rng.random_range(b' '..=b'~'))
                }
            })
            .collect()
    };
    let mut message = Message::new(text(rng), Bytes::new())
        .with_id(Uuid::from_u128(rng.random()))
        .with_source(text(rng))
        .with_content_type(text(rng));
    if rng.random_bool(0.5) {
        message = message.with_key(text(rng));
    }
    for _ in 0..rng.random_range(0..5) {
        message = message.with_header(text(rng), text(rng));
    }
    message
}

#[test]
fn random_messages_round_trip() {
    let mut rng = StdRng::seed_from_u64(0x6d65_7461);
    for _ in 0..2_000 {
        let message = random_message(&mut rng).with_content_type("x");
        let payload = Bytes::from(vec![rng.random::<u8>(); rng.random_range(0..64)]);
        let message = Message { payload, ..message };
        assert_eq!(
            read_message(EntryId { ms: 1, seq: 1 }, as_reply(&written(&message))),
            Ok(message)
        );
    }
}

#[test]
fn random_and_damaged_meta_fields_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x6675_7a7a);
    for _ in 0..20_000 {
        let mut meta = meta_of(&random_message(&mut rng));
        match rng.random_range(0..4) {
            // Pure noise, the version byte kept half of the time.
            0 => {
                let len = rng.random_range(0..64);
                meta = (0..len).map(|_| rng.random()).collect();
                if rng.random_bool(0.5) && !meta.is_empty() {
                    meta[0] = META_VERSION;
                }
            }
            // Cut short.
            1 => meta.truncate(rng.random_range(0..meta.len())),
            // A few bytes flipped.
            2 => {
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..meta.len());
                    meta[at] ^= 1 << rng.random_range(0..8);
                }
            }
            // Random bytes appended or spliced in.
            _ => {
                let at = rng.random_range(0..=meta.len());
                let extra: Vec<u8> = (0..rng.random_range(1..12)).map(|_| rng.random()).collect();
                meta.splice(at..at, extra);
            }
        }
        // Any answer will do, as long as it is one; what decodes must survive a round
        // trip.
        if let Ok(message) = decode_meta(&meta, Bytes::new()) {
            let again = meta_of(&message);
            assert_eq!(decode_meta(&again, Bytes::new()), Ok(message));
        }
    }
}

#[test]
fn an_entry_from_another_producer_still_reads() {
    let fields = vec![bulk(b"foo"), bulk(b"bar"), bulk(b"type"), bulk(b"legacy")];
    let message = read_message(EntryId { ms: 7, seq: 3 }, fields).unwrap();
    assert_eq!(message.message_type, "legacy");
    assert_eq!(message.id, Uuid::from_u64_pair(7, 3));
    assert!(message.headers.is_empty());
    assert!(message.payload.is_empty());
}

#[test]
fn another_producers_field_named_meta_is_not_taken_for_cairns() {
    let fields = vec![
        bulk(b"meta"),
        bulk(b"{\"source\":\"sensor\"}"),
        bulk(b"type"),
        bulk(b"reading"),
    ];
    let message = read_message(EntryId { ms: 3, seq: 0 }, fields).unwrap();
    assert_eq!(message.message_type, "reading");
}

#[test]
fn an_entry_of_the_field_per_attribute_layout_reads_whole() {
    let message = full();
    let fields = vec![
        bulk(b"id"),
        bulk(message.id.hyphenated().to_string().as_bytes()),
        bulk(b"type"),
        bulk(b"order.placed"),
        bulk(b"source"),
        bulk(b"/orders"),
        bulk(b"key"),
        bulk(b"order-7"),
        bulk(b"content-type"),
        bulk(b"application/octet-stream"),
        bulk(b"h:traceparent"),
        bulk(b"00-abc-def-01"),
        bulk("h:x-text".as_bytes()),
        bulk("héllo".as_bytes()),
        bulk(b"payload"),
        bulk(&[0, 255, 10]),
    ];
    assert_eq!(read_message(EntryId { ms: 1, seq: 2 }, fields), Ok(message));
}

#[test]
fn in_an_entry_with_meta_other_fields_are_ignored_and_a_missing_payload_is_empty() {
    let message = Message::new("t", Bytes::new()).with_key("k");
    let fields = vec![
        bulk(b"type"),
        bulk(b"ignored"),
        bulk(b"cairn-meta"),
        bulk(&meta_of(&message)),
    ];
    assert_eq!(read_message(EntryId { ms: 1, seq: 2 }, fields), Ok(message));
}

#[test]
fn entry_ids_parse_print_and_order_numerically() {
    let small = EntryId::parse(b"9-5").unwrap();
    let large = EntryId::parse(b"10-0").unwrap();
    assert!(small < large);
    assert_eq!(large.to_string(), "10-0");
    let widest = EntryId {
        ms: u64::MAX,
        seq: u64::MAX,
    };
    let text = widest.to_string();
    assert_eq!(text, format!("{}-{}", u64::MAX, u64::MAX));
    assert_eq!(EntryId::parse(text.as_bytes()), Some(widest));
    assert_eq!(EntryId { ms: 0, seq: 0 }.to_string(), "0-0");
    let mut command = redis::cmd("XACK");
    command.arg(EntryId {
        ms: 1_712_000_000_123,
        seq: 42,
    });
    assert!(
        command
            .args_iter()
            .any(|arg| matches!(arg, redis::Arg::Simple(b"1712000000123-42")))
    );
    for bad in [
        &b"nonsense"[..],
        b"",
        b"-",
        b"1-",
        b"-1",
        b"1-2-3",
        b"+1-2",
        b"1-x",
        b"18446744073709551616-0",
        b"1 -2",
    ] {
        assert_eq!(
            EntryId::parse(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn the_id_map_finds_what_it_holds() {
    let mut map = EntryMap::default();
    for ms in 0..1_000u64 {
        map.insert(EntryId { ms, seq: ms % 7 }, ms);
    }
    for ms in 0..1_000u64 {
        assert_eq!(map.get(&EntryId { ms, seq: ms % 7 }), Some(&ms));
        assert_eq!(
            map.get(&EntryId {
                ms,
                seq: ms % 7 + 1
            }),
            None
        );
    }
    // Two maps draw different keys.
    let (a, b) = (IdHash::default(), IdHash::default());
    let id = EntryId { ms: 5, seq: 1 };
    assert_ne!(a.hash_one(id), b.hash_one(id));
}

//! How a [`Message`] is written as the fields of a stream entry and read back, and
//! `EntryId`, a stream entry's id.
//!
//! # The entry
//!
//! One entry per message, with two fields, in this order:
//!
//! | field        | value                                                                 |
//! |--------------|-----------------------------------------------------------------------|
//! | `cairn-meta` | every attribute of the message but the payload, in the layout below  |
//! | `payload`    | the payload bytes, as they are                                        |
//!
//! Two fields, not one per attribute, because a consumer's largest cost is the client
//! parsing `XREADGROUP` replies, element by element: an entry costs its id, its field
//! list and four elements, where a field per attribute cost ten or more. The payload
//! stays a field of its own, unencoded, so `redis-cli` shows it as it was published.
//! The metadata field's name says whose it is, so that another producer's entry with a
//! field of a plainer name (`meta`, say) is still read as the lenient reading below says.
//!
//! # The `cairn-meta` field, version 1
//!
//! | bytes | content |
//! |---|---|
//! | 1 | the layout's version: `1` |
//! | 16 | the message id: the UUID's 16 bytes, in the order of its text form |
//! | 1 | flags: bit 0 (`0x01`) is set when the message has a key; the other bits are 0 |
//! | text | `message_type` |
//! | text | `source` |
//! | text | `content_type` |
//! | text | the key, only when flag bit 0 is set (a key may be empty) |
//! | varint | the number of headers |
//! | text, text | per header, its name and its value |
//!
//! A *varint* is an unsigned LEB128 number: 7 bits per byte, the lowest first, the high
//! bit set on every byte but the last; at most 10 bytes, at most 2⁶⁴ − 1. A *text* is a
//! varint length followed by that many bytes of UTF-8. Nothing follows the last header.
//! Example: a message with id `01890a5d-ac96-774b-bcce-b302099a8057`, type `t`, no
//! source, content type `application/json`, key `k` and no headers is `01`, the 16 id
//! bytes `01 89 0a … 80 57`, `01`, `01 74`, `00`, `10 61 70 … 6f 6e`, `01 6b`, `00`.
//!
//! A reader refuses a `cairn-meta` field whose version it does not know or whose bytes
//! do not follow the layout of their version ([`MetaError`]); the subscription reports
//! such an entry and leaves it pending (see the [crate docs](crate)). A new layout gets
//! the next version number; readers that know it must be running before any producer
//! writes it.
//!
//! # Entries without `cairn-meta`
//!
//! Entries written by earlier releases of this crate, or by other producers, have no
//! `cairn-meta` field and are read field by field, leniently:
//!
//! | field          | value                                        |
//! |----------------|----------------------------------------------|
//! | `id`           | the message id, as a hyphenated UUID         |
//! | `type`         | `message_type`                               |
//! | `source`       | `source`                                     |
//! | `key`          | the ordering key                             |
//! | `content-type` | `content_type`                               |
//! | `h:<name>`     | one field per header                         |
//! | `payload`      | the payload bytes, as they are               |
//!
//! A missing or unreadable `id` becomes a UUID made of the entry id, missing text fields
//! become empty, fields with other names are ignored. In an entry with a `cairn-meta`
//! field, only `cairn-meta` and `payload` are read; a missing `payload` is an empty one.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};

use bytes::Bytes;
use cairn_bus::{CompactString, Headers, Message};
use redis::{Cmd, Value};
use uuid::Uuid;

/// The field holding every attribute of a message but its payload.
pub const META: &str = "cairn-meta";
/// The field holding the payload.
pub const PAYLOAD: &str = "payload";
/// The version of the `cairn-meta` layout this release writes, and the only one it reads.
pub const META_VERSION: u8 = 1;

/// Flag bit: the message has a key.
const HAS_KEY: u8 = 0x01;
/// The longest varint: ten bytes of seven bits cover 64 bits.
const MAX_VARINT: u32 = 10;

const HEADER_PREFIX: &str = "h:";

/// Why a `cairn-meta` field cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// Written in a layout version this reader does not know (a newer producer's).
    #[error(
        "metadata version {version} is unknown here (this reader knows version {META_VERSION})"
    )]
    UnknownVersion {
        /// The version byte found.
        version: u8,
    },
    /// The bytes do not follow the layout of their version.
    #[error("malformed metadata at byte {offset}: {problem}")]
    Malformed {
        /// Where the problem was found, from the start of the field.
        offset: usize,
        /// What was wrong.
        problem: &'static str,
    },
}

/// A stream entry's id, `<milliseconds>-<sequence>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct EntryId {
    ms: u64,
    seq: u64,
}

impl EntryId {
    /// The longest text of an id: two 20-digit numbers and the dash.
    const MAX_TEXT: usize = 41;

    /// Parses `<ms>-<seq>`, two decimal numbers.
    pub(crate) fn parse(text: &[u8]) -> Option<Self> {
        let dash = text.iter().position(|&byte| byte == b'-')?;
        Some(Self {
            ms: decimal(text.get(..dash)?)?,
            seq: decimal(text.get(dash + 1..)?)?,
        })
    }

    /// Parses the id out of a reply value.
    pub(crate) fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::BulkString(bytes) => Self::parse(bytes),
            Value::SimpleString(text) => Self::parse(text.as_bytes()),
            _ => None,
        }
    }

    /// Writes `<ms>-<seq>` into `out`, returning the bytes written.
    fn write_text(self, out: &mut [u8; Self::MAX_TEXT]) -> &[u8] {
        // Right to left: the sequence, the dash, the milliseconds. At most 20 digits
        // each, so the buffer always has room.
        let mut at = put_decimal(out, Self::MAX_TEXT, self.seq);
        at -= 1;
        out[at] = b'-';
        at = put_decimal(out, at, self.ms);
        &out[at..]
    }
}

/// Writes `n`'s digits into `out` so that they end before `end`; returns where they start.
fn put_decimal(out: &mut [u8], end: usize, mut n: u64) -> usize {
    let mut at = end;
    loop {
        at -= 1;
        out[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return at;
        }
    }
}

/// A decimal number of 1 to 20 digits that fits in 64 bits.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &digit| {
        if !digit.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0; Self::MAX_TEXT];
        // Only digits and a dash.
        f.write_str(std::str::from_utf8(self.write_text(&mut text)).unwrap_or_default())
    }
}

impl redis::ToRedisArgs for EntryId {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        let mut text = [0; Self::MAX_TEXT];
        out.write_arg(self.write_text(&mut text));
    }
}

impl redis::ToSingleRedisArg for EntryId {}

/// A map keyed by entry ids, hashed by [`IdHash`].
pub(crate) type EntryMap<V> = HashMap<EntryId, V, IdHash>;

/// Builds the hashers of maps keyed by entry ids. The standard SipHash costs about a
/// hundred instructions per id, and a subscription looks each delivered id up three
/// times; this is a folded multiply per word with two keys drawn at random per map, so
/// ids a producer picks (`XADD` takes explicit ids) cannot be made to collide without
/// the keys. It is not a cryptographic hash.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdHash {
    keys: (u64, u64),
}

impl Default for IdHash {
    fn default() -> Self {
        // The standard library's random SipHash keys, drawn once per map, hash two
        // constants into two random words.
        let random = RandomState::new();
        Self {
            keys: (random.hash_one(0u8), random.hash_one(1u8)),
        }
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            key: self.keys.1,
            state: self.keys.0,
        }
    }
}

/// The hasher of [`IdHash`].
#[derive(Debug)]
pub(crate) struct IdHasher {
    key: u64,
    state: u64,
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        let product = u128::from(self.state ^ word) * u128::from(self.key);
        self.state = (product as u64) ^ ((product >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

/// The `XADD` of `message` to the stream `key` (capped at about `max_len` entries when
/// given), sized once for all its arguments; `scratch` is a buffer the caller may reuse
/// from one message to the next.
pub(crate) fn xadd(
    key: &str,
    max_len: Option<usize>,
    message: &Message,
    scratch: &mut Vec<u8>,
) -> Cmd {
    scratch.clear();
    encode_meta(message, scratch);
    // XADD, key, [MAXLEN ~ n,] *, the metadata field, its value, payload, its value.
    let bytes = "XADD*".len()
        + key.len()
        + META.len()
        + scratch.len()
        + PAYLOAD.len()
        + message.payload.len();
    let mut command = match max_len {
        Some(max_len) => {
            // At most 20 digits.
            let mut command = Cmd::with_capacity(10, bytes + "MAXLEN~".len() + 20);
            command
                .arg("XADD")
                .arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len);
            command
        }
        None => {
            let mut command = Cmd::with_capacity(7, bytes);
            command.arg("XADD").arg(key);
            command
        }
    };
    command
        .arg("*")
        .arg(META)
        .arg(&scratch[..])
        .arg(PAYLOAD)
        .arg(&message.payload[..]);
    command
}

/// Writes the `cairn-meta` field of `message` (the current version) to `out`.
pub(crate) fn encode_meta(message: &Message, out: &mut Vec<u8>) {
    out.reserve(
        20 + message.message_type.len()
            + message.source.len()
            + message.content_type.len()
            + message.key.as_ref().map_or(0, |key| key.len())
            + message
                .headers
                .iter()
                .map(|(name, value)| 4 + name.len() + value.len())
                .sum::<usize>(),
    );
    out.push(META_VERSION);
    out.extend_from_slice(message.id.as_bytes());
    out.push(if message.key.is_some() { HAS_KEY } else { 0 });
    put_text(out, &message.message_type);
    put_text(out, &message.source);
    put_text(out, &message.content_type);
    if let Some(key) = &message.key {
        put_text(out, key);
    }
    put_varint(out, message.headers.len() as u64);
    for (name, value) in &message.headers {
        put_text(out, name);
        put_text(out, value);
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // The low seven bits, with the high bit saying more follow.
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// Reads a `cairn-meta` field and puts `payload` in the message it describes.
///
/// # Errors
///
/// [`MetaError::UnknownVersion`] for a version other than [`META_VERSION`],
/// [`MetaError::Malformed`] for bytes that do not follow its layout. Never panics,
/// whatever the bytes.
pub(crate) fn decode_meta(meta: &[u8], payload: Bytes) -> Result<Message, MetaError> {
    let mut cursor = Cursor { bytes: meta, at: 0 };
    let version = cursor.byte("the metadata is empty")?;
    if version != META_VERSION {
        return Err(MetaError::UnknownVersion { version });
    }
    let id = cursor.take(16, "it ends inside the message id")?;
    let id = Uuid::from_slice(id).map_err(|_| cursor.malformed("the message id"))?;
    let flags = cursor.byte("it ends before the flags")?;
    if flags & !HAS_KEY != 0 {
        return Err(MetaError::Malformed {
            offset: cursor.at - 1,
            problem: "unknown flags are set",
        });
    }
    let message_type = CompactString::from(cursor.text()?);
    let source = CompactString::from(cursor.text()?);
    let content_type = CompactString::from(cursor.text()?);
    let key = if flags & HAS_KEY != 0 {
        Some(CompactString::from(cursor.text()?))
    } else {
        None
    };
    let count = cursor.varint()?;
    let mut headers = Headers::new();
    for _ in 0..count {
        let at = cursor.at;
        let name = cursor.text()?;
        let value = cursor.text()?;
        if headers.insert(name.to_owned(), value.to_owned()).is_some() {
            return Err(MetaError::Malformed {
                offset: at,
                problem: "a header name appears twice",
            });
        }
    }
    if cursor.at != meta.len() {
        return Err(cursor.malformed("bytes follow the last header"));
    }
    Ok(Message {
        id,
        message_type,
        source,
        key,
        content_type,
        headers,
        payload,
    })
}

/// Reads a `cairn-meta` field from its start; every step checks what is left.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn malformed(&self, problem: &'static str) -> MetaError {
        MetaError::Malformed {
            offset: self.at,
            problem,
        }
    }

    fn byte(&mut self, missing: &'static str) -> Result<u8, MetaError> {
        let byte = *self.bytes.get(self.at).ok_or(self.malformed(missing))?;
        self.at += 1;
        Ok(byte)
    }

    fn take(&mut self, len: usize, missing: &'static str) -> Result<&'a [u8], MetaError> {
        let taken = self
            .at
            .checked_add(len)
            .and_then(|end| self.bytes.get(self.at..end))
            .ok_or(self.malformed(missing))?;
        self.at += len;
        Ok(taken)
    }

    fn varint(&mut self) -> Result<u64, MetaError> {
        let start = self.at;
        let mut value = 0u64;
        for shift in (0..MAX_VARINT).map(|i| 7 * i) {
            let byte = self.byte("it ends inside a number")?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte holds the 64th bit only.
            if shift == 63 && bits > 1 {
                return Err(MetaError::Malformed {
                    offset: start,
                    problem: "a number is larger than 64 bits",
                });
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(MetaError::Malformed {
            offset: start,
            problem: "a number is longer than 10 bytes",
        })
    }

    fn text(&mut self) -> Result<&'a str, MetaError> {
        let start = self.at;
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| self.malformed("a text is too long"))?;
        let bytes = self.take(len, "it ends inside a text")?;
        std::str::from_utf8(bytes).map_err(|_| MetaError::Malformed {
            offset: start,
            problem: "a text is not UTF-8",
        })
    }
}

/// One entry read from a stream.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: EntryId,
    pub(crate) message: Message,
}

/// An entry the reader refuses: its `cairn-meta` field cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) id: EntryId,
    pub(crate) reason: MetaError,
}

/// Reads an entry, `[id, [field, value, ...]]`: the message, or why it is refused;
/// `None` when the value has another shape (an entry deleted from the stream while
/// pending reads as `[id, nil]`).
pub(crate) fn read_entry(value: Value) -> Option<Result<Entry, Refused>> {
    let Value::Array(parts) = value else {
        return None;
    };
    let mut parts = parts.into_iter();
    let id = EntryId::from_value(&parts.next()?)?;
    let fields = match parts.next()? {
        Value::Array(fields) => fields,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    Some(match read_message(id, fields) {
        Ok(message) => Ok(Entry { id, message }),
        Err(reason) => Err(Refused { id, reason }),
    })
}

/// Reads a list of entries into `out`; values of another shape are left out.
pub(crate) fn read_entries(value: Value, out: &mut Vec<Result<Entry, Refused>>) {
    if let Value::Array(entries) = value {
        out.extend(entries.into_iter().filter_map(read_entry));
    }
}

/// Reads the fields of entry `entry`: through `cairn-meta` when it has one, else field by
/// field.
fn read_message(entry: EntryId, fields: Vec<Value>) -> Result<Message, MetaError> {
    let compact = fields
        .iter()
        .step_by(2)
        .any(|name| name_is(name, META.as_bytes()));
    if !compact {
        return Ok(read_fields(entry, fields));
    }
    let mut meta = None;
    let mut payload = None;
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if meta.is_none() && name_is(&name, META.as_bytes()) {
            meta = bytes_of(value);
        } else if payload.is_none() && name_is(&name, PAYLOAD.as_bytes()) {
            payload = bytes_of(value);
        }
    }
    let Some(meta) = meta else {
        return Err(MetaError::Malformed {
            offset: 0,
            problem: "the meta field is not a string",
        });
    };
    decode_meta(&meta, payload.map_or_else(Bytes::new, Bytes::from))
}

fn name_is(name: &Value, expected: &[u8]) -> bool {
    match name {
        Value::BulkString(bytes) => bytes == expected,
        Value::SimpleString(text) => text.as_bytes() == expected,
        _ => false,
    }
}

/// The lenient reading of an entry with a field per attribute.
fn read_fields(entry: EntryId, fields: Vec<Value>) -> Message {
    let mut id = None;
    let mut message_type = String::new();
    let mut source = String::new();
    let mut key = None;
    let mut content_type = String::new();
    let mut headers = Headers::new();
    let mut payload = Bytes::new();
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let Some(name) = bytes_of(name) else { continue };
        let Some(value) = bytes_of(value) else {
            continue;
        };
        match name.as_slice() {
            b"id" => {
                id = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|s| s.parse().ok())
            }
            b"type" => message_type = text(value),
            b"source" => source = text(value),
            b"key" => key = Some(text(value)),
            b"content-type" => content_type = text(value),
            b"payload" => payload = Bytes::from(value),
            other => {
                if let Some(header) = other.strip_prefix(HEADER_PREFIX.as_bytes()) {
                    headers.insert(String::from_utf8_lossy(header).into_owned(), text(value));
                }
            }
        }
    }
    Message {
        id: id.unwrap_or_else(|| Uuid::from_u64_pair(entry.ms, entry.seq)),
        message_type: message_type.into(),
        source: source.into(),
        key: key.map(CompactString::from),
        content_type: content_type.into(),
        headers,
        payload,
    }
}

fn bytes_of(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests;

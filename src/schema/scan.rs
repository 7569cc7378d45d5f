//! The wire scan: reads the fields a set of [`FieldPath`]s names out of an encoded
//! message, without decoding the rest. Fields it does not need are skipped by their wire
//! type (a length-delimited one in one step), and only the messages on a path are
//! entered. Protobuf's rules hold: fields come in any order and may repeat, the last
//! value of a scalar wins, and a message field that appears more than once is merged, so
//! the last value found inside any of its occurrences wins too.

use prost::encoding::decode_varint;

use super::FieldPath;

/// Groups (a deprecated proto2 encoding) skipped inside one another at most.
const MAX_GROUP_DEPTH: usize = 32;

/// Why a message does not decode. The scan checks the structure of every field it walks
/// past (tags, wire types, lengths), and nothing of what lies inside fields it skips.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("a varint runs past the end of the message or over 10 bytes")]
    Varint,
    #[error("a field's length runs past the end of its message")]
    Length,
    #[error("field number 0 or above 2^29")]
    FieldNumber,
    #[error("wire type {0} is not a protobuf wire type")]
    WireType(u8),
    #[error("field {0} has wire type {1}, but the schema makes it length-delimited")]
    NotLengthDelimited(u32, u8),
    #[error("a group is not closed, or closed by another field")]
    Group,
}

/// The fields one set of paths reads, as a tree over field numbers; built once per
/// method, used for every message of its calls.
#[derive(Clone, Debug, Default)]
pub struct Reader {
    root: Node,
    leaves: usize,
}

#[derive(Clone, Debug, Default)]
struct Node {
    children: Vec<(u32, Child)>,
}

#[derive(Clone, Debug)]
enum Child {
    /// The value read goes to this index of the output.
    Leaf(usize),
    Nested(Node),
}

impl Node {
    fn child(&self, number: u32) -> Option<&Child> {
        self.children
            .iter()
            .find_map(|(n, child)| (*n == number).then_some(child))
    }
}

impl Reader {
    /// A reader for `paths`; the value of `paths[i]` is read into `values[i]`.
    /// Resolved paths never make one field both a leaf and a message, and the same path
    /// twice shares the first one's place.
    pub fn new(paths: &[&FieldPath]) -> Reader {
        let mut root = Node::default();
        for (index, path) in paths.iter().enumerate() {
            let mut node = &mut root;
            for (at, &number) in path.numbers.iter().enumerate() {
                let last = at + 1 == path.numbers.len();
                let position = match node.children.iter().position(|(n, _)| *n == number) {
                    Some(position) => position,
                    None => {
                        let child = if last {
                            Child::Leaf(index)
                        } else {
                            Child::Nested(Node::default())
                        };
                        node.children.push((number, child));
                        node.children.len() - 1
                    }
                };
                match &mut node.children[position].1 {
                    Child::Nested(next) if !last => node = next,
                    _ => break,
                }
            }
        }
        Reader {
            root,
            leaves: paths.len(),
        }
    }

    /// How many values [`Reader::read`] fills.
    pub fn len(&self) -> usize {
        self.leaves
    }

    pub fn is_empty(&self) -> bool {
        self.leaves == 0
    }

    /// Reads the named fields of `message` into `values` (one per path, `None` when the
    /// field is absent, which in proto3 means its default, the empty string).
    pub fn read<'m>(
        &self,
        message: &'m [u8],
        values: &mut [Option<&'m [u8]>],
    ) -> Result<(), Malformed> {
        scan(message, &self.root, values)
    }
}

fn scan<'m>(
    mut rest: &'m [u8],
    node: &Node,
    values: &mut [Option<&'m [u8]>],
) -> Result<(), Malformed> {
    while !rest.is_empty() {
        let (number, wire) = key(&mut rest)?;
        match node.child(number) {
            Some(child) => {
                if wire != 2 {
                    return Err(Malformed::NotLengthDelimited(number, wire));
                }
                let value = length_delimited(&mut rest)?;
                match child {
                    Child::Leaf(index) => {
                        if let Some(slot) = values.get_mut(*index) {
                            *slot = Some(value);
                        }
                    }
                    Child::Nested(inner) => scan(value, inner, values)?,
                }
            }
            None => skip(&mut rest, number, wire, 0)?,
        }
    }
    Ok(())
}

/// A field's key: its number and wire type.
fn key(rest: &mut &[u8]) -> Result<(u32, u8), Malformed> {
    let key = decode_varint(rest).map_err(|_| Malformed::Varint)?;
    let number = u32::try_from(key >> 3).map_err(|_| Malformed::FieldNumber)?;
    if number == 0 || number >= 1 << 29 {
        return Err(Malformed::FieldNumber);
    }
    match (key & 7) as u8 {
        wire @ (6 | 7) => Err(Malformed::WireType(wire)),
        wire => Ok((number, wire)),
    }
}

fn length_delimited<'m>(rest: &mut &'m [u8]) -> Result<&'m [u8], Malformed> {
    let length = decode_varint(rest).map_err(|_| Malformed::Varint)?;
    let length = usize::try_from(length).map_err(|_| Malformed::Length)?;
    if length > rest.len() {
        return Err(Malformed::Length);
    }
    let (value, after) = rest.split_at(length);
    *rest = after;
    Ok(value)
}

fn advance(rest: &mut &[u8], bytes: usize) -> Result<(), Malformed> {
    *rest = rest.get(bytes..).ok_or(Malformed::Length)?;
    Ok(())
}

/// Skips one field of wire type `wire` (its key already read).
fn skip(rest: &mut &[u8], number: u32, wire: u8, depth: usize) -> Result<(), Malformed> {
    match wire {
        0 => decode_varint(rest).map(drop).map_err(|_| Malformed::Varint),
        1 => advance(rest, 8),
        2 => length_delimited(rest).map(drop),
        5 => advance(rest, 4),
        3 => {
            if depth >= MAX_GROUP_DEPTH {
                return Err(Malformed::Group);
            }
            loop {
                if rest.is_empty() {
                    return Err(Malformed::Group);
                }
                let (inner, inner_wire) = key(rest)?;
                if inner_wire == 4 {
                    return if inner == number {
                        Ok(())
                    } else {
                        Err(Malformed::Group)
                    };
                }
                skip(rest, inner, inner_wire, depth + 1)?;
            }
        }
        _ => Err(Malformed::Group),
    }
}

#[cfg(test)]
mod tests {
    use prost::encoding::{WireType, encode_key, encode_varint};

    use super::*;

    fn text(out: &mut Vec<u8>, number: u32, value: &[u8]) {
        encode_key(number, WireType::LengthDelimited, out);
        encode_varint(value.len() as u64, out);
        out.extend_from_slice(value);
    }

    fn path(numbers: &[u32]) -> FieldPath {
        FieldPath {
            numbers: numbers.to_vec(),
        }
    }

    fn read<'m>(reader: &Reader, message: &'m [u8]) -> Result<Vec<Option<&'m [u8]>>, Malformed> {
        let mut values = vec![None; reader.len()];
        reader.read(message, &mut values)?;
        Ok(values)
    }

    #[test]
    fn reads_named_fields_in_any_order_and_skips_the_rest() {
        let (tenant, user) = (path(&[1]), path(&[2, 1]));
        let reader = Reader::new(&[&tenant, &user]);
        let mut owner = Vec::new();
        text(&mut owner, 3, b"team");
        text(&mut owner, 1, b"u1");
        let mut message = Vec::new();
        // Every wire type before the fields it wants.
        encode_key(7, WireType::Varint, &mut message);
        encode_varint(300, &mut message);
        encode_key(8, WireType::SixtyFourBit, &mut message);
        message.extend_from_slice(&[0; 8]);
        encode_key(9, WireType::ThirtyTwoBit, &mut message);
        message.extend_from_slice(&[0; 4]);
        encode_key(10, WireType::StartGroup, &mut message);
        text(&mut message, 1, b"inside a group: not the tenant");
        encode_key(10, WireType::EndGroup, &mut message);
        text(&mut message, 2, &owner);
        text(&mut message, 4, &[0xff; 300]);
        text(&mut message, 1, b"acme");
        assert_eq!(
            read(&reader, &message).unwrap(),
            [Some(&b"acme"[..]), Some(&b"u1"[..])]
        );
        assert_eq!(read(&reader, &[]).unwrap(), [None, None], "absent fields");
    }

    #[test]
    fn the_last_value_wins_and_repeated_messages_merge() {
        let (tenant, user) = (path(&[1]), path(&[2, 1]));
        let reader = Reader::new(&[&tenant, &user]);
        let mut first_owner = Vec::new();
        text(&mut first_owner, 1, b"victim");
        let mut second_owner = Vec::new();
        text(&mut second_owner, 2, b"no user here");
        let mut message = Vec::new();
        text(&mut message, 1, b"acme");
        text(&mut message, 2, &first_owner);
        text(&mut message, 1, b"evil");
        text(&mut message, 2, &second_owner);
        // The second owner has no user_id: merged, the first one's stands.
        assert_eq!(
            read(&reader, &message).unwrap(),
            [Some(&b"evil"[..]), Some(&b"victim"[..])]
        );
    }

    #[test]
    fn malformed_structure_is_refused() {
        let reader = Reader::new(&[&path(&[1]), &path(&[2, 1])]);
        let cases: [(&[u8], Malformed); 8] = [
            (&[0x0a, 0x05, b'a'], Malformed::Length),
            (&[0x0a], Malformed::Varint),
            (&[0x80; 11], Malformed::Varint),
            (&[0x00, 0x01], Malformed::FieldNumber),
            (&[0x0e, 0x00], Malformed::WireType(6)),
            (&[0x08, 0x01], Malformed::NotLengthDelimited(1, 0)),
            (&[0x1b, 0x0a, 0x00], Malformed::Group),
            (&[0x12, 0x02, 0x0a, 0x05], Malformed::Length),
        ];
        for (message, expected) in cases {
            assert_eq!(read(&reader, message), Err(expected), "{message:?}");
        }
        // Inside a field it skips, nothing is looked at.
        assert_eq!(
            read(&reader, &[0x1a, 0x02, 0xff, 0xff]).unwrap(),
            [None, None]
        );
    }
}

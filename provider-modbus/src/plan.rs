//! Read planning: a device's tags merged into as few read requests as the protocol allows.
//!
//! Per table, tags are sorted by address and swept once: a tag joins the current request when the
//! request, grown to cover it, stays within the device's limit per read (125 registers or 2000 bits
//! at most) and the unmapped gap before the tag is at most the device's gap threshold (so reads do
//! not wander far into address space the device may refuse). A tag is never split across requests.
//! For tags that must not be split, starting each request at the first tag not yet covered and
//! growing it as far as the limit allows is optimal: no plan with the same gap rule needs fewer
//! requests.

use crate::map::{Device, RegisterMap, Table};

/// One read request and the tags it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlock {
    /// The table read.
    pub table: Table,
    /// First register (or bit) read.
    pub start: u16,
    /// Registers (or bits) read.
    pub count: u16,
    /// Indices into [`RegisterMap::tags`] of the tags inside the block.
    pub tags: Vec<usize>,
}

/// The read requests of one device's poll, tables in a fixed order, addresses ascending.
#[must_use]
pub fn plan_device(map: &RegisterMap, device: usize) -> Vec<ReadBlock> {
    let dev: &Device = &map.devices[device];
    let mut blocks = Vec::new();
    for table in Table::ALL {
        let (limit, gap) = if table.is_bits() {
            (u32::from(dev.max_bits_per_read), u32::from(dev.max_bit_gap))
        } else {
            (u32::from(dev.max_registers_per_read), u32::from(dev.max_register_gap))
        };
        let mut tags: Vec<usize> = map.tags_of(device).filter(|&i| map.tags[i].table == table).collect();
        tags.sort_by_key(|&i| (map.tags[i].address, map.tags[i].width()));
        let mut current: Option<(u32, u32, Vec<usize>)> = None; // [start, end), tags
        for i in tags {
            let tag = &map.tags[i];
            let (a, b) = (u32::from(tag.address), u32::from(tag.address) + u32::from(tag.width()));
            match current.as_mut() {
                Some((start, end, members)) if a <= *end + gap && b.max(*end) - *start <= limit => {
                    *end = b.max(*end);
                    members.push(i);
                }
                _ => {
                    if let Some(done) = current.take() {
                        blocks.push(block(table, done));
                    }
                    current = Some((a, b, vec![i]));
                }
            }
        }
        if let Some(done) = current {
            blocks.push(block(table, done));
        }
    }
    blocks
}

fn block(table: Table, (start, end, tags): (u32, u32, Vec<usize>)) -> ReadBlock {
    ReadBlock {
        table,
        start: start as u16,
        count: (end - start) as u16,
        tags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(extra_device: &str, tags: &str) -> RegisterMap {
        RegisterMap::parse(&format!(
            "[devices.d]\naddress = \"127.0.0.1:502\"\n{extra_device}\n{tags}"
        ))
        .unwrap()
    }

    fn tag(name: &str, table: &str, address: u32, ty: &str) -> String {
        let length = if ty == "string" { "length = 10\n" } else { "" };
        format!("[[tags]]\nname = \"{name}\"\ntable = \"{table}\"\naddress = {address}\ntype = \"{ty}\"\n{length}")
    }

    fn shape(blocks: &[ReadBlock]) -> Vec<(Table, u16, u16, usize)> {
        blocks
            .iter()
            .map(|b| (b.table, b.start, b.count, b.tags.len()))
            .collect()
    }

    #[test]
    fn adjacent_tags_merge_up_to_the_protocol_limit() {
        // 200 contiguous u16 holding registers: 125 + 75.
        let tags: String = (0..200).map(|i| tag(&format!("h{i}"), "holding", i, "u16")).collect();
        let m = map("", &tags);
        assert_eq!(
            shape(&plan_device(&m, 0)),
            vec![
                (Table::HoldingRegister, 0, 125, 125),
                (Table::HoldingRegister, 125, 75, 75)
            ]
        );
        // 3000 coils: 2000 + 1000.
        let tags: String = (0..3000).map(|i| tag(&format!("c{i}"), "coil", i, "bool")).collect();
        let m = map("", &tags);
        assert_eq!(
            shape(&plan_device(&m, 0)),
            vec![(Table::Coil, 0, 2000, 2000), (Table::Coil, 2000, 1000, 1000)]
        );
    }

    #[test]
    fn a_tag_is_never_split_and_gaps_follow_the_threshold() {
        // f64 tags every 4 registers: 31 fit in 124 registers, the 32nd would need 128.
        let tags: String = (0..40).map(|i| tag(&format!("f{i}"), "input", i * 4, "f64")).collect();
        let m = map("", &tags);
        assert_eq!(
            shape(&plan_device(&m, 0)),
            vec![(Table::InputRegister, 0, 124, 31), (Table::InputRegister, 124, 36, 9)]
        );
        // A gap of 16 reads through (default threshold), a gap of 17 does not.
        let tags = [
            tag("a", "holding", 0, "u16"),
            tag("b", "holding", 17, "u16"),
            tag("c", "holding", 35, "u16"),
        ]
        .concat();
        let m = map("", &tags);
        assert_eq!(
            shape(&plan_device(&m, 0)),
            vec![(Table::HoldingRegister, 0, 18, 2), (Table::HoldingRegister, 35, 1, 1)]
        );
        // With max_register_gap = 0 only touching tags merge.
        let m = map("max_register_gap = 0", &tags);
        assert_eq!(plan_device(&m, 0).len(), 3);
        // Overlapping tags (two views of one register) share a request.
        let tags = [
            tag("u", "holding", 5, "u16"),
            tag("i", "holding", 5, "i16"),
            tag("w", "holding", 4, "u32"),
        ]
        .concat();
        let m = map("", &tags);
        assert_eq!(shape(&plan_device(&m, 0)), vec![(Table::HoldingRegister, 4, 2, 3)]);
    }

    #[test]
    fn tables_and_device_limits_are_respected() {
        let tags = [
            tag("c", "coil", 0, "bool"),
            tag("d", "discrete", 0, "bool"),
            tag("i", "input", 0, "u16"),
            tag("h", "holding", 0, "u16"),
            tag("s", "holding", 1, "string"),
        ]
        .concat();
        let m = map("max_registers_per_read = 10", &tags);
        assert_eq!(
            shape(&plan_device(&m, 0)),
            vec![
                (Table::Coil, 0, 1, 1),
                (Table::DiscreteInput, 0, 1, 1),
                (Table::InputRegister, 0, 1, 1),
                (Table::HoldingRegister, 0, 1, 1),
                (Table::HoldingRegister, 1, 10, 1),
            ]
        );
    }
}

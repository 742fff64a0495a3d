//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to find where a socket keeps
//! its network namespace: the offset of `skc_net` in `struct sock_common` and of the
//! namespace's inode number (`ns.inum`) in `struct net`. The eBPF programs read those two
//! fields with `bpf_probe_read_kernel`, so that listeners of different network namespaces are
//! told apart without CO-RE support in the toolchain.

use std::collections::HashMap;

/// BTF kinds (`include/uapi/linux/btf.h`).
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// Where the network namespace of a socket is, in bytes from the start of the objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsOffsets {
    /// `struct sock` (its first member is `struct sock_common`) → `struct net *`.
    pub sock_net: u32,
    /// `struct net` → `unsigned int inum` of its `struct ns_common ns`.
    pub net_inum: u32,
}

/// A struct or union member: name, type id, offset in bits.
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

/// Composite types by id, and their names.
struct Types {
    composites: HashMap<u32, Vec<Member>>,
    by_name: HashMap<String, u32>,
}

/// Finds the offsets in raw BTF data.
pub fn netns_offsets(btf: &[u8]) -> Option<NetnsOffsets> {
    let types = parse(btf)?;
    let sock_common = *types.by_name.get("sock_common")?;
    let net = *types.by_name.get("net")?;
    let ns_common = *types.by_name.get("ns_common")?;
    let skc_net = member_offset(&types, sock_common, "skc_net")?;
    let ns = member_offset(&types, net, "ns")?;
    let inum = member_offset(&types, ns_common, "inum")?;
    Some(NetnsOffsets {
        // possible_net_t holds the pointer as its only member.
        sock_net: skc_net,
        net_inum: ns + inum,
    })
}

/// The byte offset of member `name` of composite `type_id`, looking through anonymous
/// struct and union members.
fn member_offset(types: &Types, type_id: u32, name: &str) -> Option<u32> {
    let members = types.composites.get(&type_id)?;
    for member in members {
        if member.name == name {
            return Some(member.bit_offset / 8);
        }
    }
    for member in members.iter().filter(|member| member.name.is_empty()) {
        if let Some(inner) = member_offset(types, member.type_id, name) {
            return Some(member.bit_offset / 8 + inner);
        }
    }
    None
}

fn parse(btf: &[u8]) -> Option<Types> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(btf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(btf.get(at..at + 4)?.try_into().ok()?));
    if u16_at(0)? != 0xeb9f {
        return None;
    }
    let header_len = u32_at(4)? as usize;
    let type_off = u32_at(8)? as usize;
    let type_len = u32_at(12)? as usize;
    let str_off = u32_at(16)? as usize;
    let strings = btf.get(header_len + str_off..)?;
    let name = |offset: u32| -> String {
        let rest = strings.get(offset as usize..).unwrap_or_default();
        let end = rest
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end]).into_owned()
    };

    let mut types = Types {
        composites: HashMap::new(),
        by_name: HashMap::new(),
    };
    let mut at = header_len + type_off;
    let end = at + type_len;
    let mut id = 1u32;
    while at + 12 <= end {
        let name_off = u32_at(at)?;
        let info = u32_at(at + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 != 0;
        at += 12;
        match kind {
            KIND_STRUCT | KIND_UNION => {
                let mut members = Vec::with_capacity(vlen);
                for index in 0..vlen {
                    let base = at + index * 12;
                    let offset = u32_at(base + 8)?;
                    members.push(Member {
                        name: name(u32_at(base)?),
                        type_id: u32_at(base + 4)?,
                        // With kind_flag the low 24 bits are the offset (bitfield size above).
                        bit_offset: if kind_flag {
                            offset & 0xff_ffff
                        } else {
                            offset
                        },
                    });
                }
                if name_off != 0 {
                    // The first definition wins (modules may repeat names; vmlinux does not).
                    types.by_name.entry(name(name_off)).or_insert(id);
                }
                types.composites.insert(id, members);
                at += vlen * 12;
            }
            KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
            KIND_ARRAY => at += 12,
            KIND_ENUM | KIND_FUNC_PROTO => at += vlen * 8,
            KIND_DATASEC | KIND_ENUM64 => at += vlen * 12,
            _ => {}
        }
        id += 1;
    }
    Some(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_namespace_fields_in_this_kernel() {
        let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel has BTF");
        let offsets = netns_offsets(&btf).expect("sock_common.skc_net and net.ns.inum found");
        // skc_net sits after the addresses, ports, family, state and flags (>= 16 bytes in),
        // well inside sock_common; ns is not the first member of struct net.
        assert!((16..128).contains(&offsets.sock_net), "{offsets:?}");
        assert!(
            offsets.net_inum > 0 && offsets.net_inum < 4096,
            "{offsets:?}"
        );
    }

    #[test]
    fn garbage_is_not_btf() {
        assert!(netns_offsets(b"not btf at all").is_none());
        assert!(netns_offsets(&[]).is_none());
    }
}

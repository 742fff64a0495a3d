//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to find the socket fields the
//! eBPF programs read with `bpf_probe_read_kernel` (there is no CO-RE support in the
//! toolchain): where a socket keeps its network namespace (`skc_net` in `struct sock_common`,
//! the namespace's inode number `ns.inum` in `struct net`), so that listeners of different
//! namespaces are told apart; and its protocol, family, ports and addresses, which the raw
//! `inet_sock_set_state` tracepoint does not format for us. Also how many parameters the
//! kernel functions the function hooks read arguments of take, where that changed across
//! versions (see `hooks`).

use std::collections::HashMap;

use tracker_common::{SockLayout, SockOffsets};

/// BTF kinds (`include/uapi/linux/btf.h`).
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC: u32 = 12;
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

/// A struct or union member: name, type id, offset in bits, and its size in bits if it is a
/// bitfield (0 otherwise).
struct Member<'a> {
    name: &'a str,
    type_id: u32,
    bit_offset: u32,
    bitfield_bits: u32,
}

/// Composite types by id, and their names. Names borrow the BTF's string section: the
/// kernel's BTF holds hundreds of thousands of them, and copying each was most of the parse
/// (seconds on an emulated CPU).
struct Types<'a> {
    composites: HashMap<u32, Vec<Member<'a>>>,
    by_name: HashMap<&'a str, u32>,
    /// Parameter counts of function prototypes, by type id.
    proto_params: HashMap<u32, u16>,
    /// Prototype type ids of the functions in [`FUNCTIONS`], by name.
    functions: HashMap<&'static str, u32>,
}

/// The functions whose parameter counts are looked up.
const FUNCTIONS: [&str; 2] = ["tcp_recvmsg", "inet_csk_accept"];

/// Parameter counts of the functions in [`FUNCTIONS`] (None: not in the BTF).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionParams([Option<u16>; FUNCTIONS.len()]);

impl FunctionParams {
    /// How many parameters `function` takes on this kernel (None: not known).
    pub fn count(&self, function: &str) -> Option<usize> {
        let index = FUNCTIONS.iter().position(|&name| name == function)?;
        self.0[index].map(usize::from)
    }
}

/// What the daemon needs from the kernel's BTF.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelLayout {
    pub netns: Option<NetnsOffsets>,
    pub sock: Option<SockLayout>,
    /// Offset of `sock.sk_flags`, whose `SOCK_DONE` tells a closing socket handed to a
    /// time-wait socket still waiting for the client's FIN (see `tracker_common::handover`).
    pub sock_flags: Option<u32>,
    pub params: FunctionParams,
}

/// Finds the offsets in raw BTF data (`Default`, all unknown, if it is not BTF).
pub fn kernel_layout(btf: &[u8]) -> KernelLayout {
    let Some(types) = parse(btf) else {
        return KernelLayout::default();
    };
    KernelLayout {
        netns: netns_offsets(&types),
        sock: sock_layout(&types),
        sock_flags: sock_flags_offset(&types),
        params: FunctionParams(FUNCTIONS.map(|name| {
            let proto = types.functions.get(name)?;
            types.proto_params.get(proto).copied()
        })),
    }
}

fn netns_offsets(types: &Types<'_>) -> Option<NetnsOffsets> {
    let sock_common = *types.by_name.get("sock_common")?;
    let net = *types.by_name.get("net")?;
    let ns_common = *types.by_name.get("ns_common")?;
    let skc_net = member_offset(types, sock_common, "skc_net")?;
    let ns = member_offset(types, net, "ns")?;
    let inum = member_offset(types, ns_common, "inum")?;
    Some(NetnsOffsets {
        // possible_net_t holds the pointer as its only member.
        sock_net: skc_net,
        net_inum: ns + inum,
    })
}

/// Where `struct sock` (and `struct inet_sock`, which begins with it) keeps what the lifecycle
/// program reads. None if any field is missing or is a bitfield (`sk_protocol` was one before
/// Linux 5.6).
fn sock_layout(types: &Types<'_>) -> Option<SockLayout> {
    let sock = *types.by_name.get("sock")?;
    let common = member_offset(types, sock, "__sk_common")?;
    let sock_common = *types.by_name.get("sock_common")?;
    let in_common = |name: &str| Some(common + member_offset(types, sock_common, name)?);
    let offsets = SockOffsets {
        protocol: member_offset(types, sock, "sk_protocol")?,
        family: in_common("skc_family")?,
        local_port: member_offset(types, *types.by_name.get("inet_sock")?, "inet_sport")?,
        remote_port: in_common("skc_dport")?,
        local_v4: in_common("skc_rcv_saddr")?,
        remote_v4: in_common("skc_daddr")?,
        local_v6: in_common("skc_v6_rcv_saddr")?,
        remote_v6: in_common("skc_v6_daddr")?,
    };
    let layout = SockLayout::new(&offsets);
    if layout.is_none() {
        log::debug!("struct sock's endpoint fields are not laid out as expected: {offsets:?}");
    }
    layout
}

/// Where `struct sock` keeps its flags: `sk_flags`, or, since Linux 6.18, `skc_flags` in its
/// `sock_common` (which `sk_flags` names).
fn sock_flags_offset(types: &Types<'_>) -> Option<u32> {
    let sock = *types.by_name.get("sock")?;
    member_offset(types, sock, "sk_flags").or_else(|| {
        let common = member_offset(types, sock, "__sk_common")?;
        let sock_common = *types.by_name.get("sock_common")?;
        Some(common + member_offset(types, sock_common, "skc_flags")?)
    })
}

/// The byte offset of member `name` of composite `type_id`, looking through anonymous
/// struct and union members. Bitfields and members not on a byte boundary are not found.
fn member_offset(types: &Types<'_>, type_id: u32, name: &str) -> Option<u32> {
    let members = types.composites.get(&type_id)?;
    for member in members {
        if member.name == name {
            if member.bitfield_bits != 0 || member.bit_offset % 8 != 0 {
                return None;
            }
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

/// The raw BTF and its string section.
struct Blob<'a> {
    bytes: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Blob<'a> {
    fn u32_at(&self, at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.bytes.get(at..at + 4)?.try_into().ok()?,
        ))
    }

    /// The name at `offset` of the string section. A name that is not UTF-8 is no name this
    /// module looks for.
    fn name(&self, offset: u32) -> &'a str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// The `vlen` members of a struct or union whose member records start at `at`.
    fn members(&self, at: usize, vlen: usize, kind_flag: bool) -> Option<Vec<Member<'a>>> {
        let mut members = Vec::with_capacity(vlen);
        for index in 0..vlen {
            let base = at + index * 12;
            let offset = self.u32_at(base + 8)?;
            members.push(Member {
                name: self.name(self.u32_at(base)?),
                type_id: self.u32_at(base + 4)?,
                // With kind_flag the low 24 bits are the offset, the bitfield size above.
                bit_offset: if kind_flag {
                    offset & 0xff_ffff
                } else {
                    offset
                },
                bitfield_bits: if kind_flag { offset >> 24 } else { 0 },
            });
        }
        Some(members)
    }
}

fn parse(btf: &[u8]) -> Option<Types<'_>> {
    if u16::from_le_bytes(btf.get(0..2)?.try_into().ok()?) != 0xeb9f {
        return None;
    }
    let header = Blob {
        bytes: btf,
        strings: &[],
    };
    let header_len = header.u32_at(4)? as usize;
    let type_off = header.u32_at(8)? as usize;
    let type_len = header.u32_at(12)? as usize;
    let str_off = header.u32_at(16)? as usize;
    let blob = Blob {
        bytes: btf,
        strings: btf.get(header_len + str_off..)?,
    };
    let mut types = Types {
        composites: HashMap::new(),
        by_name: HashMap::new(),
        proto_params: HashMap::new(),
        functions: HashMap::new(),
    };
    let mut at = header_len + type_off;
    let end = at + type_len;
    let mut id = 1u32;
    while at + 12 <= end {
        let name_off = blob.u32_at(at)?;
        let info = blob.u32_at(at + 4)?;
        let size_or_type = blob.u32_at(at + 8)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 != 0;
        at += 12;
        match kind {
            KIND_STRUCT | KIND_UNION => {
                let members = blob.members(at, vlen, kind_flag)?;
                if name_off != 0 {
                    // The first definition wins (modules may repeat names; vmlinux does not).
                    types.by_name.entry(blob.name(name_off)).or_insert(id);
                }
                types.composites.insert(id, members);
                at += vlen * 12;
            }
            KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
            KIND_ARRAY => at += 12,
            KIND_FUNC_PROTO => {
                types.proto_params.insert(id, vlen as u16);
                at += vlen * 8;
            }
            KIND_FUNC => {
                let func_name = blob.name(name_off);
                if let Some(&function) = FUNCTIONS.iter().find(|&&f| f == func_name) {
                    types.functions.entry(function).or_insert(size_or_type);
                }
            }
            KIND_ENUM => at += vlen * 8,
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
        let offsets = kernel_layout(&btf)
            .netns
            .expect("sock_common.skc_net and net.ns.inum found");
        // skc_net sits after the addresses, ports, family, state and flags (>= 16 bytes in),
        // well inside sock_common; ns is not the first member of struct net.
        assert!((16..128).contains(&offsets.sock_net), "{offsets:?}");
        assert!(
            offsets.net_inum > 0 && offsets.net_inum < 4096,
            "{offsets:?}"
        );
    }

    #[test]
    fn finds_the_socket_fields_in_this_kernel() {
        let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel has BTF");
        let sock = kernel_layout(&btf).sock.expect("struct sock fields found");
        // The address pair opens sock_common (daddr, then rcv_saddr), the port pair follows
        // the hash (dport, then num), then the family: a layout stable since Linux 3.x, which
        // `SockLayout::new` checks.
        assert_eq!(sock.head, 0, "{sock:?}");
        assert!(sock.v6_pair > 16, "{sock:?}");
        assert!(
            sock.protocol > sock.v6_pair + 32,
            "sk_protocol lies past sock_common"
        );
        assert!(
            sock.local_port > sock.protocol,
            "inet_sport lies past struct sock"
        );
        let flags = kernel_layout(&btf).sock_flags.expect("sock.sk_flags found");
        assert!(
            flags > 16 && flags.is_multiple_of(8),
            "sk_flags, an unsigned long, lies past the family: {flags}"
        );
    }

    #[test]
    fn finds_the_parameter_counts_in_this_kernel() {
        let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel has BTF");
        let params = kernel_layout(&btf).params;
        // 5.19 dropped tcp_recvmsg's `nonblock`, 6.16 its `addr_len`; 6.10 folded inet_csk_accept's flags, err
        // and kern into one argument.
        assert!(
            matches!(params.count("tcp_recvmsg"), Some(4..=6)),
            "{params:?}"
        );
        assert!(
            matches!(params.count("inet_csk_accept"), Some(2 | 4)),
            "{params:?}"
        );
        assert_eq!(params.count("not_a_function"), None);
    }

    #[test]
    fn garbage_is_not_btf() {
        assert_eq!(kernel_layout(b"not btf at all"), KernelLayout::default());
        assert_eq!(kernel_layout(&[]), KernelLayout::default());
    }
}

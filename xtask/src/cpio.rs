//! A newc cpio writer for the VMs' initramfs images.

/// A newc ("070701") cpio archive, the format the kernel unpacks into its rootfs.
#[derive(Default)]
pub(crate) struct Cpio {
    bytes: Vec<u8>,
    next_inode: u32,
}

impl Cpio {
    pub(crate) fn directory(&mut self, path: &str) {
        self.entry(path, 0o040_755, b"");
    }

    pub(crate) fn file(&mut self, path: &str, permissions: u32, data: &[u8]) {
        self.entry(path, 0o100_000 | permissions, data);
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, 0o120_777, target.as_bytes());
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.next_inode += 1;
        let name = path.trim_start_matches('/');
        let size = u32::try_from(data.len()).expect("initramfs files are under 4 GiB");
        let name_size = u32::try_from(name.len() + 1).expect("short names");
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
        // namesize check
        let fields = [
            self.next_inode,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            0,
            0,
            name_size,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, b"");
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned_and_end_with_the_trailer() {
        let mut archive = Cpio::default();
        archive.directory("/bin");
        archive.file("/bin/x", 0o755, b"hello");
        let bytes = archive.finish();
        assert!(bytes.starts_with(b"070701"));
        // Header (110) + "bin\0" (4) = 114, padded to 116; the file's header follows.
        assert_eq!(&bytes[116..122], b"070701");
        assert_eq!(&bytes[116 + 6 + 6 * 8..116 + 6 + 7 * 8], b"00000005");
        assert!(bytes.len().is_multiple_of(4));
        assert!(bytes.ends_with(b"TRAILER!!!\0\0\0\0"));
    }
}

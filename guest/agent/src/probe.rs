//! Filesystem signatures, libblkid-free: enough to tell a blank volume from a used one and to
//! pick the type for `fstype: "auto"`.

use std::io::Read;
use std::path::Path;

#[derive(Debug, PartialEq)]
pub enum Probe {
    /// a known filesystem (or other known content, e.g. "swap", "crypto_LUKS")
    Fs(&'static str),
    /// the probed region is all zeros
    Blank,
    /// data we do not recognize: never format over it
    Unknown,
}

/// Bytes read from the start of the device: covers the btrfs superblock at 64 KiB.
const PROBE_LEN: usize = 68 * 1024;

fn at(b: &[u8], off: usize, magic: &[u8]) -> bool {
    b.get(off..off + magic.len()) == Some(magic)
}

pub fn probe(b: &[u8]) -> Probe {
    let sigs: &[(usize, &[u8], &'static str)] = &[
        (1080, &[0x53, 0xef], "ext4"),
        (0, b"XFSB", "xfs"),
        (1024, &[0xe2, 0xe1, 0xf5, 0xe0], "erofs"),
        (65600, b"_BHRfS_M", "btrfs"),
        (4086, b"SWAPSPACE2", "swap"),
        (4086, b"SWAP-SPACE", "swap"),
        (0, b"LUKS\xba\xbe", "crypto_LUKS"),
        (0, b"hsqs", "squashfs"),
        (32769, b"CD001", "iso9660"),
        (512, b"EFI PART", "gpt"),
    ];
    for (off, magic, name) in sigs {
        if at(b, *off, magic) {
            return Probe::Fs(name);
        }
    }
    if at(b, 510, &[0x55, 0xaa]) {
        // FAT boot sector: "FAT12/16" at 54 or "FAT32" at 82; otherwise an MBR.
        if at(b, 54, b"FAT1") || at(b, 82, b"FAT32") {
            return Probe::Fs("vfat");
        }
        return Probe::Fs("mbr");
    }
    if b.iter().all(|&x| x == 0) {
        Probe::Blank
    } else {
        Probe::Unknown
    }
}

pub fn probe_device(dev: &Path) -> std::io::Result<Probe> {
    let f = std::fs::File::open(dev)?;
    let mut buf = Vec::with_capacity(PROBE_LEN);
    f.take(PROBE_LEN as u64).read_to_end(&mut buf)?;
    Ok(probe(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let mut b = vec![0u8; PROBE_LEN];
        assert_eq!(probe(&b), Probe::Blank);
        b[1080] = 0x53;
        b[1081] = 0xef;
        assert_eq!(probe(&b), Probe::Fs("ext4"));
        let mut b = vec![0u8; PROBE_LEN];
        b[..4].copy_from_slice(b"XFSB");
        assert_eq!(probe(&b), Probe::Fs("xfs"));
        let mut b = vec![0u8; PROBE_LEN];
        b[1024..1028].copy_from_slice(&0xE0F5E1E2u32.to_le_bytes());
        assert_eq!(probe(&b), Probe::Fs("erofs"));
        let mut b = vec![0u8; PROBE_LEN];
        b[510] = 0x55;
        b[511] = 0xaa;
        b[82..87].copy_from_slice(b"FAT32");
        assert_eq!(probe(&b), Probe::Fs("vfat"));
        let mut b = vec![0u8; PROBE_LEN];
        b[100] = 1;
        assert_eq!(probe(&b), Probe::Unknown);
        // A short device is judged on what there is.
        assert_eq!(probe(&[0u8; 100]), Probe::Blank);
    }
}

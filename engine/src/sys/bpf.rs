//! The BPF map calls the shards make per connection (kernel byte accounting, see
//! `crate::accounting` and docs/ebpf.md): insert (and, for a socket already closed, delete) an element of a map that aya
//! created, by its fd. Loading and attaching the program, and reading the per-CPU totals, go
//! through aya; these calls do not, so that a shard registers a socket with one `bpf(2)` call
//! and no lock.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::cvt;

#[cfg(test)]
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `BPF_MAP_*_ELEM`'s part of `union bpf_attr` (the kernel zero-fills the rest).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `BPF_OBJ_GET_INFO_BY_FD`'s part of `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_map_info` (the kernel writes at most `info_len` bytes).
#[repr(C)]
#[derive(Default)]
struct MapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: `attr` is a valid, initialised `repr(C)` prefix of `union bpf_attr` for `cmd`,
    // of the size passed; every pointer inside it points at memory of the sizes the kernel
    // will read or write (checked by the callers below against the map's key and value sizes).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    cvt(ret as libc::c_int).map(drop)
}

/// A BPF map, by fd, with its key and value sizes (every call checks its buffers against them,
/// so the kernel never reads or writes past one).
#[derive(Debug)]
pub struct BpfMap {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
}

impl BpfMap {
    /// Takes `fd` (a BPF map) and reads its key and value sizes.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let mut info = MapInfo::default();
        let mut attr = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: size_of::<MapInfo>() as u32,
            info: (&raw mut info) as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        Ok(Self {
            fd,
            key_size: info.key_size as usize,
            value_size: info.value_size as usize,
        })
    }

    fn check(&self, key: &[u8], value: Option<usize>) -> io::Result<()> {
        if key.len() != self.key_size || value.is_some_and(|v| v != self.value_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "BPF map element of {}+{} bytes, the map's are {}+{}",
                    key.len(),
                    value.unwrap_or(0),
                    self.key_size,
                    self.value_size
                ),
            ));
        }
        Ok(())
    }

    /// `BPF_MAP_UPDATE_ELEM` with `flags` (`0`: any, `1`: only a new key).
    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
        self.check(key, Some(value.len()))?;
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
    }

    /// `BPF_MAP_DELETE_ELEM`; `Ok(false)` when the key was not there.
    pub fn delete(&self, key: &[u8]) -> io::Result<bool> {
        self.check(key, None)?;
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            pad: 0,
            key: key.as_ptr() as u64,
            value: 0,
            flags: 0,
        };
        match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `BPF_MAP_LOOKUP_ELEM` into `value`; `Ok(false)` when the key is not there.
    #[cfg(test)]
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
        self.check(key, Some(value.len()))?;
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

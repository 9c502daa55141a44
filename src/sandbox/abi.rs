//! The guest ABI, independent of the engine that runs it (documented in `docs/plugin-abi.md`).

use super::Capability;

/// The import module every host function lives in.
pub const HOST_MODULE: &str = "las";
/// The linear memory the host reads input from and output out of.
pub const MEMORY_EXPORT: &str = "memory";
/// `las_alloc(len: i32) -> i32`: the guest reserves `len` bytes for the input and says where.
pub const ALLOC_EXPORT: &str = "las_alloc";

/// A WebAssembly value type, as far as the ABI needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValType {
    I32,
    I64,
}

/// One host function of [`HOST_MODULE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostImport {
    pub name: &'static str,
    pub capability: Capability,
    pub params: &'static [ValType],
    pub results: &'static [ValType],
}

impl HostImport {
    /// The signature as WebAssembly text writes it, e.g. `(param i32 i32)`.
    pub fn signature(&self) -> String {
        signature(self.params, self.results)
    }
}

pub(crate) fn signature(params: &[ValType], results: &[ValType]) -> String {
    let names = |v: &[ValType]| -> Vec<&'static str> {
        v.iter()
            .map(|t| match t {
                ValType::I32 => "i32",
                ValType::I64 => "i64",
            })
            .collect()
    };
    wat_signature(&names(params), &names(results))
}

/// `(param a b) (result c)` as WebAssembly text writes it, `()` for neither.
pub(crate) fn wat_signature(params: &[&str], results: &[&str]) -> String {
    let mut parts = Vec::new();
    if !params.is_empty() {
        parts.push(format!("(param {})", params.join(" ")));
    }
    if !results.is_empty() {
        parts.push(format!("(result {})", results.join(" ")));
    }
    if parts.is_empty() {
        "()".into()
    } else {
        parts.join(" ")
    }
}

const HOST_IMPORTS: [HostImport; 3] = [
    HostImport {
        name: "log",
        capability: Capability::Log,
        params: &[ValType::I32, ValType::I32],
        results: &[],
    },
    HostImport {
        name: "clock_ms",
        capability: Capability::Clock,
        params: &[],
        results: &[ValType::I64],
    },
    HostImport {
        name: "random_u64",
        capability: Capability::Random,
        params: &[],
        results: &[ValType::I64],
    },
];

/// Every host function the ABI defines, granted or not.
pub fn host_imports() -> &'static [HostImport] {
    &HOST_IMPORTS
}

pub(crate) fn host_import(name: &str) -> Option<&'static HostImport> {
    HOST_IMPORTS.iter().find(|h| h.name == name)
}

/// An entry's result: `(ptr << 32) | len`, both unsigned 32-bit.
pub fn pack(ptr: u32, len: u32) -> i64 {
    ((u64::from(ptr) << 32) | u64::from(len)) as i64
}

/// The `(ptr, len)` of an entry's result.
pub fn unpack(v: i64) -> (u32, u32) {
    let v = v as u64;
    ((v >> 32) as u32, v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_and_unpack_are_inverse_over_the_whole_range() {
        for (p, l) in [
            (0, 0),
            (1, 2),
            (u32::MAX, 7),
            (65536, u32::MAX),
            (u32::MAX, u32::MAX),
        ] {
            assert_eq!(unpack(pack(p, l)), (p, l));
        }
        assert_eq!(pack(1, 2), (1i64 << 32) | 2);
    }

    #[test]
    fn every_capability_but_content_has_exactly_one_host_function() {
        for c in Capability::ALL {
            let want = usize::from(c != Capability::Content);
            assert_eq!(
                host_imports().iter().filter(|h| h.capability == c).count(),
                want,
                "{c}"
            );
        }
        assert_eq!(host_import("log").unwrap().signature(), "(param i32 i32)");
        assert_eq!(host_import("clock_ms").unwrap().signature(), "(result i64)");
        assert_eq!(wat_signature(&[], &[]), "()");
    }
}

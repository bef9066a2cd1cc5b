//! The one host call made without the SDK's reader: `proxy_get_header_map_pairs`, whose
//! serialized result [`filter_core::MapBuffers`] parses into the strings of the last map a filter
//! gave back. The SDK's `get_map_bytes` allocates a string per name and per value, and the filter
//! frees them all again: ~4,300 of the headers filter's ~16,500 instructions of VM work per
//! request under V8 (docs/benchmarks.md). This is the crate's only `unsafe`: the import, and
//! taking ownership of the buffer the host allocated through the SDK's
//! `proxy_on_memory_allocate`, exactly as the SDK's own reader does.

#![allow(unsafe_code)]

use proxy_wasm::types::{MapType, Status};

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "env")]
unsafe extern "C" {
    // The SDK's declaration of the same import, type for type.
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// The host's serialization of the header map `map_type` (empty when the host returns none).
#[cfg(target_arch = "wasm32")]
pub fn header_map_bytes(map_type: MapType) -> Result<Box<[u8]>, Status> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size through the two out-pointers, which point to
    // live locals.
    let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    match status {
        Status::Ok if data.is_null() => Ok(Box::default()),
        Status::Ok => {
            // SAFETY: on success the host hands over `size` bytes it allocated through the SDK's
            // `proxy_on_memory_allocate(size)`, which returns `Box::into_raw` of a boxed slice of
            // exactly `size` bytes from the global allocator; nothing else owns them. Rebuilding
            // that box frees them when dropped (the SDK's reader does the same with a `Vec`).
            Ok(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(data, size)) })
        }
        other => Err(other),
    }
}

/// Off wasm (host builds of this crate, never loaded by Envoy): the SDK's reader, serialized.
#[cfg(not(target_arch = "wasm32"))]
pub fn header_map_bytes(map_type: MapType) -> Result<Box<[u8]>, Status> {
    let pairs = proxy_wasm::hostcalls::get_map_bytes(map_type)?;
    let pairs: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_slice()))
        .collect();
    Ok(filter_core::map_buffers::serialize(&pairs).into_boxed_slice())
}

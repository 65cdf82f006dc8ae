//! The VMDK text descriptor on its own: `looks_like_descriptor` and `Descriptor::parse` (extent
//! lines, CID/parentCID, createType, parentFileNameHint). Checks: no panic; memory at most 16 x the input plus 64 KiB (the parsed
//! records are copies of parts of the text). Dictionary: fuzz/dict/vmdk.dict.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vboot::image::vmdk::{looks_like_descriptor, Descriptor};
use vboot_fuzz::heap;

fuzz_target!(|data: &[u8]| {
    heap::start(64 << 20);
    let _ = looks_like_descriptor(&data[..data.len().min(512)]);
    if let Ok(d) = Descriptor::parse(data, "/img/d.vmdk") {
        let _ = d.has_parent();
    }
    let bound = (64 << 10) + 16 * data.len() as u64;
    assert!(heap::peak() <= bound, "descriptor of {} bytes took {} bytes", data.len(), heap::peak());
    heap::stop();
});

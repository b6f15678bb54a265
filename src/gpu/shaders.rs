//! The WGSL kernel sources, assembled into the two shader modules the GPU backend compiles once
//! per context. WGSL has no includes, so each module is the shared prelude (`common.wgsl`) followed
//! by its kernel families.

/// One compiled module: a label and the files it is made of, in order.
#[derive(Debug, Clone, Copy)]
pub struct ModuleSource {
    pub label: &'static str,
    pub files: &'static [(&'static str, &'static str)],
}

const COMMON: (&str, &str) = ("common.wgsl", include_str!("../../shaders/common.wgsl"));
const SELECT: (&str, &str) = ("select.wgsl", include_str!("../../shaders/select.wgsl"));
const BLOCK_NORMS: (&str, &str) = ("block_norms.wgsl", include_str!("../../shaders/block_norms.wgsl"));
const BLOCK: (&str, &str) = ("block.wgsl", include_str!("../../shaders/block.wgsl"));
const NM: (&str, &str) = ("nm.wgsl", include_str!("../../shaders/nm.wgsl"));
const MASK: (&str, &str) = ("mask.wgsl", include_str!("../../shaders/mask.wgsl"));
const COMPACT: (&str, &str) = ("compact.wgsl", include_str!("../../shaders/compact.wgsl"));

/// Histograms for the radix select (entry point `histogram`).
pub const SELECT_MODULE: ModuleSource = ModuleSource {
    label: "mlprune select",
    files: &[COMMON, SELECT],
};

/// Block norms: their weighted histograms and the flags (entry points `block_norm_histogram`,
/// `block_prune_flags`; the histogram binding is select.wgsl's).
pub const BLOCK_NORM_MODULE: ModuleSource = ModuleSource {
    label: "mlprune block norms",
    files: &[COMMON, SELECT, BLOCK_NORMS],
};

/// Masks, packing and compaction (entry points `pack`, `scan_local`, `scan_blocks`, `scatter`).
pub const PRUNE_MODULE: ModuleSource = ModuleSource {
    label: "mlprune prune",
    files: &[COMMON, BLOCK, NM, MASK, COMPACT],
};

/// Every module, for validation.
pub const MODULES: [ModuleSource; 3] = [SELECT_MODULE, BLOCK_NORM_MODULE, PRUNE_MODULE];

impl ModuleSource {
    /// The module's WGSL text: its files concatenated.
    pub fn source(&self) -> String {
        let mut text = String::new();
        for (name, body) in self.files {
            text.push_str("// ---- ");
            text.push_str(name);
            text.push('\n');
            text.push_str(body);
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses and validates a module, then writes it for every native backend.
    fn translate_everywhere(module: &ModuleSource) -> Result<(), String> {
        let parsed =
            naga::front::wgsl::parse_str(&module.source()).map_err(|e| e.emit_to_string(&module.source()))?;
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&parsed)
        .map_err(|e| format!("validation: {e:?}"))?;

        let spv = naga::back::spv::write_vec(&parsed, &info, &naga::back::spv::Options::default(), None)
            .map_err(|e| format!("spir-v: {e}"))?;
        if spv.is_empty() {
            return Err("spir-v: empty".into());
        }

        let mut msl = String::new();
        let options = naga::back::msl::Options::default();
        let pipeline = naga::back::msl::PipelineOptions::default();
        naga::back::msl::Writer::new(&mut msl)
            .write(&parsed, &info, &options, &pipeline)
            .map_err(|e| format!("msl: {e}"))?;
        if !msl.contains("kernel") {
            return Err("msl: no kernel function".into());
        }

        let mut hlsl = String::new();
        let options = naga::back::hlsl::Options::default();
        naga::back::hlsl::Writer::new(&mut hlsl, &options, &Default::default())
            .write(&parsed, &info, None)
            .map_err(|e| format!("hlsl: {e}"))?;
        if !hlsl.contains("numthreads") {
            return Err("hlsl: no compute entry point".into());
        }
        Ok(())
    }

    #[test]
    fn every_module_validates_and_translates_to_msl_spirv_and_hlsl() {
        for module in MODULES {
            if let Err(e) = translate_everywhere(&module) {
                panic!("{}: {e}", module.label);
            }
        }
    }

    #[test]
    fn modules_expose_the_entry_points_the_host_uses() {
        let entry_points = |m: &ModuleSource| -> Vec<String> {
            naga::front::wgsl::parse_str(&m.source())
                .map(|module| module.entry_points.iter().map(|e| e.name.clone()).collect())
                .unwrap_or_default()
        };
        assert_eq!(entry_points(&SELECT_MODULE), ["histogram"]);
        assert_eq!(
            entry_points(&BLOCK_NORM_MODULE),
            ["histogram", "block_norm_histogram", "block_prune_flags"]
        );
        assert_eq!(
            entry_points(&PRUNE_MODULE),
            ["pack", "scan_local", "scan_blocks", "scatter"]
        );
    }
}

//! Which x86-64 SIMD paths this process may take: the CPU's features, detected once, and the
//! zero-sized tokens that prove them.
//!
//! A function compiled with `target_feature(enable = …)` may only run on a CPU that has every feature it
//! enables; anywhere else calling it is undefined behaviour. So every such function in mlprune
//! takes, as a parameter, the token whose name lists exactly the features it enables
//! ([`Avx2Popcnt`] for `enable = "avx2,popcnt"`), and a token's only constructor, `detect()`,
//! returns one only if every one of the token's features was detected. Holding the token is the
//! proof the `unsafe` call's SAFETY comment points at; a kernel cannot reach its SIMD code
//! without one. A test below reads `src/` and checks that every `target_feature` attribute's list
//! is the list of a token the function takes, and that features are detected nowhere else.
//!
//! Detection runs once per process (a [`OnceLock`]). `MLPRUNE_PORTABLE=1` in the environment at
//! that moment makes every `detect()` return `None`, so the whole process runs the portable code
//! (for tests and benches). It can only switch paths off, never claim a feature the CPU lacks.
//! Tests that compare paths pass tokens (or `None`) explicitly instead.
//!
//! On other architectures nothing is detected and no token is ever made.

use std::sync::OnceLock;

/// The environment variable that forces the portable code (value `1`), read once.
pub const PORTABLE_ENV: &str = "MLPRUNE_PORTABLE";

/// Every feature a token may require; bit `i` of the detected set is `KNOWN[i]`.
const KNOWN: [&str; 5] = ["ssse3", "popcnt", "avx2", "bmi1", "f16c"];

/// Whether the running CPU has `feature` (one of [`KNOWN`]): the only place mlprune asks.
#[cfg(target_arch = "x86_64")]
fn cpu_has(feature: &str) -> bool {
    match feature {
        "ssse3" => std::arch::is_x86_feature_detected!("ssse3"),
        "popcnt" => std::arch::is_x86_feature_detected!("popcnt"),
        "avx2" => std::arch::is_x86_feature_detected!("avx2"),
        "bmi1" => std::arch::is_x86_feature_detected!("bmi1"),
        "f16c" => std::arch::is_x86_feature_detected!("f16c"),
        _ => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has(_: &str) -> bool {
    false
}

/// The detected features as a [`KNOWN`] bit set, or none under `MLPRUNE_PORTABLE=1`.
fn detected() -> u32 {
    static DETECTED: OnceLock<u32> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        if std::env::var_os(PORTABLE_ENV).is_some_and(|v| v == "1") {
            return 0;
        }
        KNOWN
            .iter()
            .enumerate()
            .fold(0, |set, (i, f)| set | (u32::from(cpu_has(f)) << i))
    })
}

/// The [`KNOWN`] bit set of `features`; a feature outside [`KNOWN`] fails the build (every token's
/// set is computed in a `const`).
const fn feature_set(features: &[&str]) -> u32 {
    let mut set = 0;
    let mut f = 0;
    while f < features.len() {
        let mut i = 0;
        loop {
            assert!(
                i < KNOWN.len(),
                "a token requires a feature cpu.rs does not detect"
            );
            if str_eq(KNOWN[i], features[f]) {
                break;
            }
            i += 1;
        }
        set |= 1 << i;
        f += 1;
    }
    set
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

macro_rules! tokens {
    ($($(#[$doc:meta])* $name:ident = [$($feature:literal),+];)*) => {
        $(
            $(#[$doc])*
            ///
            /// Zero-sized; the private field leaves [`Self::detect`] as the only way to make one.
            #[derive(Debug, Clone, Copy, PartialEq, Eq)]
            pub struct $name(());

            impl $name {
                /// The features this token proves, as a `target_feature` list names them.
                pub const FEATURES: &'static [&'static str] = &[$($feature),+];
                const SET: u32 = feature_set(Self::FEATURES);

                /// The token, if the CPU has every one of [`Self::FEATURES`] (and
                /// `MLPRUNE_PORTABLE=1` was not set when the process first asked).
                #[inline]
                pub fn detect() -> Option<Self> {
                    (detected() & Self::SET == Self::SET).then_some($name(()))
                }
            }
        )*

        /// Every token, by name, with its features (for the pairing test).
        #[cfg(test)]
        const TOKENS: &[(&str, &[&str])] = &[$((stringify!($name), $name::FEATURES)),*];
    };
}

tokens! {
    /// SSSE3 and POPCNT: the byte-shuffle compaction (`compact.rs`).
    Ssse3Popcnt = ["ssse3", "popcnt"];
    /// AVX2: n:m ranking of 2- and 4-element groups (`nm_rank.rs`), fp16 pairwise block norms
    /// (`block_norms.rs`).
    Avx2 = ["avx2"];
    /// AVX2 and POPCNT: the keep mask by one compare (`keep_mask.rs`).
    Avx2Popcnt = ["avx2", "popcnt"];
    /// AVX2, POPCNT and BMI1: the bracket count (`bracket.rs`).
    Avx2PopcntBmi1 = ["avx2", "popcnt", "bmi1"];
    /// AVX2 and F16C: the fp16 row step of sequential block norms (`block_norms.rs`).
    Avx2F16c = ["avx2", "f16c"];
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    /// A token exists only where every one of its features is there (or none, when forced
    /// portable): checked against the standard library's own detection.
    #[test]
    fn a_token_is_made_only_when_all_its_features_are_detected() {
        let forced = std::env::var_os(PORTABLE_ENV).is_some_and(|v| v == "1");
        let all = |features: &[&str]| !forced && features.iter().all(|f| cpu_has(f));
        assert_eq!(Ssse3Popcnt::detect().is_some(), all(Ssse3Popcnt::FEATURES));
        assert_eq!(Avx2::detect().is_some(), all(Avx2::FEATURES));
        assert_eq!(Avx2Popcnt::detect().is_some(), all(Avx2Popcnt::FEATURES));
        assert_eq!(Avx2PopcntBmi1::detect().is_some(), all(Avx2PopcntBmi1::FEATURES));
        assert_eq!(Avx2F16c::detect().is_some(), all(Avx2F16c::FEATURES));
        #[cfg(target_arch = "x86_64")]
        if !forced {
            assert_eq!(cpu_has("avx2"), std::arch::is_x86_feature_detected!("avx2"));
            assert_eq!(cpu_has("bmi1"), std::arch::is_x86_feature_detected!("bmi1"));
        }
        assert!(!cpu_has("avx512f"), "only the known features are ever reported");
    }

    #[test]
    fn feature_sets_are_bits_of_the_known_features() {
        assert_eq!(feature_set(&["ssse3"]), 1);
        assert_eq!(feature_set(&["avx2", "popcnt", "bmi1"]), 0b01110);
        assert_eq!(Avx2F16c::SET, 0b10100);
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Every `target_feature(enable = …)` function in `src/` takes a token parameter whose
    /// features are exactly the enabled ones (so it cannot be called without proof of each), and
    /// nothing outside this file detects features itself.
    #[test]
    fn every_target_feature_function_takes_the_token_of_its_features() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let attribute = concat!("#[target_", "feature(enable = \"");
        let detect = concat!("is_x86_", "feature_detected!");
        let mut checked = 0;
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            if !file.ends_with("prune/cpu.rs") {
                assert!(
                    !text.contains(detect),
                    "{}: detects CPU features itself",
                    file.display()
                );
            }
            for (at, _) in text.match_indices(attribute) {
                let rest = &text[at + attribute.len()..];
                let list = &rest[..rest.find('"').unwrap()];
                let mut enabled: Vec<&str> = list.split(',').map(str::trim).collect();
                enabled.sort_unstable();
                // The signature: from the attribute to the body's opening brace.
                let signature = &rest[..rest.find('{').unwrap()];
                assert!(
                    signature.contains("fn "),
                    "{}: `{list}` on no function",
                    file.display()
                );
                let takes = TOKENS.iter().any(|(name, features)| {
                    let mut features = features.to_vec();
                    features.sort_unstable();
                    features == enabled && signature.contains(&format!(": {name},"))
                });
                assert!(
                    takes,
                    "{}: a function enabling `{list}` takes no token of exactly those features:\n{signature}",
                    file.display()
                );
                checked += 1;
            }
        }
        assert!(checked >= 8, "found only {checked} target_feature functions");
    }
}

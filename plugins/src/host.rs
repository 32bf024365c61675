//! [`PluginHost`]: the wasmtime engine, its linker, the compiled-component caches and
//! the clock that enforces deadlines.
//!
//! One host per process. Components are compiled once: in memory they are cached as
//! `InstancePre`s keyed by their sha256; on disk (when a cache directory is given) as
//! precompiled artifacts keyed by sha256 and the engine's compatibility hash, so a
//! restart or another worker process on the same machine skips Cranelift.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

use crate::bindings::{HOST_IMPORT, PERSONALIZE_EXPORT, TYPES_IMPORT, v0_1};
use crate::error::PluginError;
use crate::limits::PluginLimits;
use crate::run::PluginState;

/// How often the epoch advances. Deadlines are rounded up to a multiple of it.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(2);

/// A validated component, compiled and linked, ready to instantiate.
pub struct Plugin {
    pub(crate) pre: v0_1::PersonalizerPre<PluginState>,
    pub(crate) sha256: String,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl Plugin {
    /// The sha256 of the component's bytes (hex).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// What validation learned about a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// The sha256 of its bytes (hex).
    pub sha256: String,
    /// Its size in bytes.
    pub size: usize,
}

/// The process's plugin host. Cheap to clone.
#[derive(Clone)]
pub struct PluginHost {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("limits", &self.inner.limits)
            .field("cache_dir", &self.inner.cache_dir)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<PluginState>,
    pub(crate) limits: PluginLimits,
    compiled: moka::sync::Cache<String, Arc<Plugin>>,
    cache_dir: Option<PathBuf>,
    engine_key: String,
    pub(crate) slots: Slots,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// A counting semaphore for blocking threads: instances alive at once never exceed
/// the pooling allocator's size, so a busy host makes callers wait instead of failing.
pub(crate) struct Slots {
    free: Mutex<u32>,
    freed: Condvar,
}

pub(crate) struct SlotGuard<'a>(&'a Slots);

impl Slots {
    fn new(n: u32) -> Self {
        Slots {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    pub(crate) fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += 1;
        self.0.freed.notify_one();
    }
}

/// The hex sha256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn engine_config(limits: &PluginLimits) -> Config {
    let n = limits.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .max_core_instances_per_component(32)
        .total_core_instances(n * 32)
        .max_memories_per_component(4)
        .total_memories(n * 4)
        .max_tables_per_component(8)
        .total_tables(n * 8)
        .max_memory_size(limits.memory_bytes)
        .table_elements(limits.table_elements);
    let mut config = Config::new();
    config
        .strategy(Strategy::Cranelift)
        .wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(limits.wasm_stack_bytes)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

impl PluginHost {
    /// A host with these limits. `cache_dir`, when given, keeps precompiled components
    /// across restarts (it is created when missing).
    pub fn new(limits: PluginLimits, cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        let engine = Engine::new(&engine_config(&limits))
            .map_err(|e| PluginError::Host(format!("starting the WebAssembly engine: {e}")))?;
        let mut linker = Linker::<PluginState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Host(format!("linking WASI: {e}")))?;
        v0_1::Personalizer::add_to_linker::<PluginState, HasSelf<PluginState>>(
            &mut linker,
            |state| state,
        )
        .map_err(|e| PluginError::Host(format!("linking the host interface: {e}")))?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                PluginError::Host(format!("creating the plugin cache {}: {e}", dir.display()))
            })?;
        }
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish());

        let stop_ticker = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop_ticker.clone();
            std::thread::Builder::new()
                .name("plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| PluginError::Host(format!("starting the deadline clock: {e}")))?;
        }
        Ok(PluginHost {
            inner: Arc::new(Inner {
                slots: Slots::new(limits.max_instances.max(1)),
                engine,
                linker,
                compiled: moka::sync::Cache::builder().max_capacity(64).build(),
                cache_dir,
                engine_key,
                limits,
                stop_ticker,
            }),
        })
    }

    /// The limits every call runs within.
    pub fn limits(&self) -> &PluginLimits {
        &self.inner.limits
    }

    /// Checks that `bytes` are a component implementing `world personalizer`, compiles
    /// it and keeps it ready. This is what an upload runs; nothing is stored by it.
    pub fn validate(&self, bytes: &[u8]) -> Result<(ComponentInfo, Arc<Plugin>), PluginError> {
        let max = self.inner.limits.max_component_bytes;
        if bytes.len() > max {
            return Err(PluginError::TooLarge {
                size: bytes.len(),
                max,
            });
        }
        if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
            return Err(PluginError::NotWasm);
        }
        // Bytes 4..8: version and layer. Layer 0 is a core module, 1 a component.
        if bytes[6..8] == [0, 0] {
            return Err(PluginError::CoreModule);
        }
        let sha256 = sha256_hex(bytes);
        let plugin = self.load(&sha256, bytes)?;
        Ok((
            ComponentInfo {
                sha256,
                size: bytes.len(),
            },
            plugin,
        ))
    }

    /// The ready plugin for a component: from memory, from the disk cache, or compiled
    /// now. `sha256` must be the hash of `bytes` (as stored by the registry).
    pub fn load(&self, sha256: &str, bytes: &[u8]) -> Result<Arc<Plugin>, PluginError> {
        if let Some(plugin) = self.inner.compiled.get(sha256) {
            return Ok(plugin);
        }
        let component = self.compile(sha256, bytes)?;
        check_world(&self.inner.engine, &component)?;
        let pre =
            self.inner.linker.instantiate_pre(&component).map_err(|e| {
                PluginError::WrongWorld(format!("the component cannot be linked: {e}"))
            })?;
        let pre = v0_1::PersonalizerPre::new(pre).map_err(|e| {
            PluginError::WrongWorld(format!(
                "the component's `{PERSONALIZE_EXPORT}` does not match wit/mailing-plugin.wit: {e}"
            ))
        })?;
        let plugin = Arc::new(Plugin {
            pre,
            sha256: sha256.to_owned(),
        });
        self.inner
            .compiled
            .insert(sha256.to_owned(), plugin.clone());
        Ok(plugin)
    }

    /// The component, if it is compiled and in memory.
    pub fn get(&self, sha256: &str) -> Option<Arc<Plugin>> {
        self.inner.compiled.get(sha256)
    }

    fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.inner.cache_dir.as_ref()?;
        // Only hex names ever reach the file system.
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(dir.join(format!("{sha256}-{}.cwasm", self.inner.engine_key)))
    }

    fn compile(&self, sha256: &str, bytes: &[u8]) -> Result<Component, PluginError> {
        let engine = &self.inner.engine;
        let path = self.cache_path(sha256);
        if let Some(path) = path.as_deref().filter(|p| p.exists()) {
            match deserialize_cached(engine, path) {
                Ok(component) => return Ok(component),
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "Discarding an unusable precompiled plugin; compiling again"),
            }
        }
        let component = Component::new(engine, bytes)
            .map_err(|e| PluginError::Invalid(first_line(&format!("{e:#}"))))?;
        if let Some(path) = path
            && let Err(e) = component
                .serialize()
                .map_err(|e| e.to_string())
                .and_then(|artifact| write_atomically(&path, &artifact).map_err(|e| e.to_string()))
        {
            tracing::warn!(path = %path.display(), error = %e, "Could not cache a compiled plugin");
        }
        Ok(component)
    }
}

/// Loads a precompiled component that this host wrote itself. The file is read into
/// memory rather than mapped, so a cache file truncated by someone else can never fault
/// the process.
#[allow(unsafe_code)]
fn deserialize_cached(engine: &Engine, path: &Path) -> Result<Component, String> {
    let artifact = std::fs::read(path).map_err(|e| e.to_string())?;
    if Engine::detect_precompiled(&artifact).is_none() {
        return Err("not a precompiled wasmtime artifact".into());
    }
    // SAFETY: `Component::deserialize` trusts its input to be an artifact that wasmtime
    // produced. The files in the cache directory are written only by
    // `PluginHost::compile` (atomically, by rename) and are named by the component's
    // sha256 and this engine's compatibility hash; wasmtime also checks the artifact's
    // header, version and engine settings before using it.
    unsafe { Component::deserialize(engine, &artifact) }.map_err(|e| e.to_string())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s);
    line.chars().take(400).collect()
}

/// A friendly check of the component's imports and exports before linking, so that a
/// component of another world is refused with a reason a plugin author understands.
fn check_world(engine: &Engine, component: &Component) -> Result<(), PluginError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    if !exports.iter().any(|name| name == PERSONALIZE_EXPORT) {
        let found = if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        };
        return Err(PluginError::WrongWorld(format!(
            "the component does not export `{PERSONALIZE_EXPORT}` (it exports {found}), so it \
             does not implement world `personalizer` of wit/mailing-plugin.wit"
        )));
    }
    for (name, _) in ty.imports(engine) {
        if name != HOST_IMPORT && name != TYPES_IMPORT && !name.starts_with("wasi:") {
            return Err(PluginError::WrongWorld(format!(
                "the component imports `{name}`, which Mailing does not provide: a plugin may \
                 import only `{HOST_IMPORT}`, `{TYPES_IMPORT}` and WASI"
            )));
        }
    }
    Ok(())
}

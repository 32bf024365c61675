//! Liquid rendering: validation of template sources (with the line of a parse error),
//! a cache of compiled templates (moka: LRU bounded by entries, TTL from
//! `TEMPLATE_CACHE_TTL`, with hit/miss/eviction counters), and the per-recipient context.
//!
//! Subscriber-controlled values (name, attributes) are HTML-escaped in the HTML body's
//! `subscriber` object; the unescaped values are under `subscriber_raw` for templates
//! that need them. Subject and text bodies get the raw values.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use liquid_core::Language;
use liquid_core::model::{
    DisplayCow, KString, KStringCow, Object, ObjectView, ScalarCow, State, Value, ValueView,
};
use serde::Serialize;

mod runtime;
use runtime::Part;

use crate::buffers::BufferPool;

/// The most bytes of one template part (subject, HTML or text).
pub const MAX_TEMPLATE_BYTES: usize = 512 * 1024;

/// The bytes of rendered-body buffers a renderer keeps between messages
/// ([`Renderer::buffers`]): about a part's worth of HTML and text bodies (~12 KB per
/// message of the bench's template). 8 MiB saved no more CPU and raised `serve`'s peak
/// RSS by as much (`mailing bench --recipients 1000000`, BENCHMARKS.md, twentieth stop).
const RENDERED_BUFFERS_BUDGET: usize = 3 << 20;

/// A rendered body larger than this is freed rather than kept.
const RENDERED_BUFFER_MAX: usize = 1 << 20;

/// Errors of rendering.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RenderError {
    /// A template part does not parse.
    #[error("{field}: line {line}: {message}")]
    Parse {
        /// `subject`, `html` or `text`.
        field: &'static str,
        /// 1-based line of the error (1 when the parser names none).
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A template part is over [`MAX_TEMPLATE_BYTES`].
    #[error("{field}: the template is larger than {MAX_TEMPLATE_BYTES} bytes")]
    TooLarge {
        /// Which part.
        field: &'static str,
    },
    /// Rendering failed for one recipient (e.g. a filter error).
    #[error("rendering {field} failed: {message}")]
    Render {
        /// Which part.
        field: &'static str,
        /// Why.
        message: String,
    },
}

/// The three sources of a template.
#[derive(Debug, Clone, Copy)]
pub struct TemplateSource<'a> {
    /// Subject line.
    pub subject: &'a str,
    /// HTML body.
    pub html: &'a str,
    /// Plain-text body.
    pub text: Option<&'a str>,
}

/// A parsed template, ready to render many times.
pub struct CompiledTemplate {
    subject: Part,
    html: Part,
    text: Option<Part>,
}

impl std::fmt::Debug for CompiledTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledTemplate").finish_non_exhaustive()
    }
}

/// One rendered message body.
#[derive(Debug, Clone, Serialize)]
pub struct Rendered {
    /// Subject line.
    pub subject: String,
    /// HTML body.
    pub html: String,
    /// Plain-text body, when the template has one.
    pub text: Option<String>,
}

/// The cache's counters, as `/admin/cache/stats` reports them.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "openapi", salvo(schema(name = "TemplateCacheStats")))]
pub struct CacheStats {
    /// Whether caching is on.
    pub enabled: bool,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that compiled the template.
    pub misses: u64,
    /// Entries dropped for size or age.
    pub evictions: u64,
    /// Entries now held.
    pub size: u64,
    /// The most entries held.
    pub capacity: u64,
    /// Seconds an entry lives.
    pub ttl_seconds: u64,
    /// hits / (hits + misses), 0 when unused.
    pub hit_ratio: f64,
}

/// Cache settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// `TEMPLATE_CACHE_ENABLED`.
    pub enabled: bool,
    /// `TEMPLATE_CACHE_TTL`.
    pub ttl: Duration,
    /// The most compiled templates held.
    pub capacity: u64,
}

/// Parses templates and caches the compiled ones. Cheap to clone.
#[derive(Clone)]
pub struct Renderer {
    language: Arc<Language>,
    /// Buffers for rendered bodies, given back by the send stage once the provider has
    /// taken them ([`CompiledTemplate::render_with`]).
    buffers: Arc<BufferPool>,
    cache: moka::sync::Cache<(i64, i64), Arc<CompiledTemplate>>,
    config: CacheConfig,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
    evictions: Arc<AtomicU64>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn line_of(message: &str) -> usize {
    // liquid reports pest positions as "--> LINE:COL".
    message
        .split("-->")
        .nth(1)
        .and_then(|rest| rest.trim_start().split(':').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1)
}

impl Renderer {
    /// A renderer with the Liquid standard library and the given cache settings.
    pub fn new(config: CacheConfig) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counter = evictions.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.capacity)
            .time_to_live(config.ttl)
            .eviction_listener(move |_k, _v, cause| {
                if cause.was_evicted() {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Renderer {
            language: Arc::new(runtime::stdlib()),
            buffers: Arc::new(BufferPool::new(
                RENDERED_BUFFERS_BUDGET,
                RENDERED_BUFFER_MAX,
            )),
            cache,
            config,
            hits: Arc::new(AtomicU64::new(0)),
            misses: Arc::new(AtomicU64::new(0)),
            evictions,
        }
    }

    /// The buffers rendered bodies are written into by [`CompiledTemplate::render_with`],
    /// to be given back once sent.
    pub fn buffers(&self) -> &Arc<BufferPool> {
        &self.buffers
    }

    fn parse_part(&self, field: &'static str, source: &str) -> Result<Part, RenderError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(RenderError::TooLarge { field });
        }
        Part::parse(source, &self.language).map_err(|e| {
            let full = e.to_string();
            // liquid's message is a pest diagram; its `= ...` lines say what is wrong.
            let reason: Vec<&str> = full
                .lines()
                .filter_map(|l| l.trim().strip_prefix("= "))
                .collect();
            let message = if reason.is_empty() {
                full.lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("liquid:")
                    .trim()
                    .to_owned()
            } else {
                reason.join("; ")
            };
            RenderError::Parse {
                field,
                line: line_of(&full),
                message,
            }
        })
    }

    /// Parses all parts of a template; the first part that fails names itself.
    pub fn compile(&self, source: TemplateSource<'_>) -> Result<CompiledTemplate, RenderError> {
        Ok(CompiledTemplate {
            subject: self.parse_part("subject", source.subject)?,
            html: self.parse_part("html", source.html)?,
            text: source
                .text
                .map(|t| self.parse_part("text", t))
                .transpose()?,
        })
    }

    /// The compiled form of a stored template, from the cache when possible. The key
    /// includes `updated_at`, so an edited template is never served stale.
    pub fn compiled(
        &self,
        id: i64,
        updated_at: i64,
        source: TemplateSource<'_>,
    ) -> Result<Arc<CompiledTemplate>, RenderError> {
        if !self.config.enabled {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(Arc::new(self.compile(source)?));
        }
        if let Some(hit) = self.cache.get(&(id, updated_at)) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let compiled = Arc::new(self.compile(source)?);
        self.cache.insert((id, updated_at), compiled.clone());
        Ok(compiled)
    }

    /// Empties the cache; returns how many entries it held.
    pub fn clear(&self) -> u64 {
        let size = self.cache.entry_count();
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
        size
    }

    /// The cache's counters.
    pub fn stats(&self) -> CacheStats {
        self.cache.run_pending_tasks();
        let hits = self.hits.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        let total = hits + misses;
        CacheStats {
            enabled: self.config.enabled,
            hits,
            misses,
            evictions: self.evictions.load(Ordering::Relaxed),
            size: self.cache.entry_count(),
            capacity: self.config.capacity,
            ttl_seconds: self.config.ttl.as_secs(),
            hit_ratio: if total == 0 {
                0.0
            } else {
                hits as f64 / total as f64
            },
        }
    }
}

/// What a recipient's template sees.
#[derive(Debug, Clone)]
pub struct RenderContext {
    /// `subscriber.email`.
    pub email: String,
    /// `subscriber.name`.
    pub name: Option<String>,
    /// `subscriber.attributes`.
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// `campaign.*`.
    pub campaign: CampaignVars,
    /// `unsubscribe_url`.
    pub unsubscribe_url: String,
    /// Variables plugins or the caller add at the top level.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Escapes the five HTML-significant characters; borrows `s` when it has none, as
/// most names, addresses and attributes do.
pub fn escape_html(s: &str) -> Cow<'_, str> {
    let Some(first) = s.find(['&', '<', '>', '"', '\'']) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 16);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A string as a Liquid scalar, borrowed when it is.
fn scalar(s: Cow<'_, str>) -> ScalarCow<'_> {
    match s {
        Cow::Borrowed(s) => ScalarCow::new(s),
        Cow::Owned(s) => ScalarCow::new(s),
    }
}

/// A JSON value as Liquid sees it, its strings HTML-escaped when `escaped`. Built
/// directly rather than through serde (`liquid::model::to_value`), which cost more than
/// a third of a message's rendering and turned the whole context empty when one number
/// did not fit an i64; such a number is a float here, as JSON readers take it.
fn to_liquid(v: &serde_json::Value, escaped: bool) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::scalar(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::scalar(i),
            None => n.as_f64().map_or(Value::Nil, Value::scalar),
        },
        serde_json::Value::String(s) if escaped => Value::scalar(escape_html(s).into_owned()),
        serde_json::Value::String(s) => Value::scalar(s.clone()),
        serde_json::Value::Array(a) => {
            Value::Array(a.iter().map(|v| to_liquid(v, escaped)).collect())
        }
        serde_json::Value::Object(o) => Value::Object(to_liquid_object(o, escaped)),
    }
}

/// A JSON object as Liquid sees it (see [`to_liquid`]).
fn to_liquid_object(o: &serde_json::Map<String, serde_json::Value>, escaped: bool) -> Object {
    o.iter()
        .map(|(k, v)| (KString::from_ref(k), to_liquid(v, escaped)))
        .collect()
}

/// A JSON object's members as Liquid values (see [`to_liquid`]), kept in key order
/// and found by binary search on keys borrowed from the recipient: the per-recipient
/// objects (`subscriber.attributes`, the plugins' variables) no longer build a liquid
/// [`Object`], a hash map that owned a copy of every key and hashed each one (SipHash)
/// once when built and again at every lookup.
#[derive(Debug)]
struct Members<'a>(Vec<(&'a str, Member<'a>)>);

/// One member's value: a string lent to the template (escaped copies only where
/// escaping changes it), anything else converted.
#[derive(Debug)]
enum Member<'a> {
    Str(ScalarCow<'a>),
    Other(Value),
}

impl<'a> Member<'a> {
    fn new(v: &'a serde_json::Value, escaped: bool) -> Self {
        match v {
            serde_json::Value::String(s) if escaped => Member::Str(scalar(escape_html(s))),
            serde_json::Value::String(s) => Member::Str(ScalarCow::new(s.as_str())),
            other => Member::Other(to_liquid(other, escaped)),
        }
    }

    fn view(&self) -> &dyn ValueView {
        match self {
            Member::Str(s) => s,
            Member::Other(v) => v,
        }
    }
}

impl<'a> Members<'a> {
    fn new(o: &'a serde_json::Map<String, serde_json::Value>, escaped: bool) -> Self {
        let mut members: Vec<(&str, Member<'_>)> = o
            .iter()
            .map(|(k, v)| (k.as_str(), Member::new(v, escaped)))
            .collect();
        // serde_json's map iterates in key order unless its `preserve_order` feature is
        // on somewhere in the build; binary search needs the order either way.
        if !members.is_sorted_by(|a, b| a.0 <= b.0) {
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }
        Members(members)
    }

    fn entries(&self) -> impl Iterator<Item = (&str, &dyn ValueView)> {
        self.0.iter().map(|(k, v)| (*k, v.view()))
    }

    fn lookup(&self, index: &str) -> Option<&dyn ValueView> {
        self.0
            .binary_search_by(|(k, _)| (*k).cmp(index))
            .ok()
            .map(|i| self.0[i].1.view())
    }
}

/// `campaign.*` as templates see it: converted to Liquid once and shared by every
/// recipient of a batch, instead of once per recipient and part.
#[derive(Debug, Clone)]
pub struct CampaignVars(Arc<Value>);

impl CampaignVars {
    /// The campaign's variables (a JSON object, e.g. `{"id": 1, "name": "Spring"}`).
    pub fn new(vars: &serde_json::Value) -> Self {
        CampaignVars(Arc::new(to_liquid(vars, false)))
    }
}

impl Default for CampaignVars {
    fn default() -> Self {
        CampaignVars(Arc::new(Value::Object(Object::new())))
    }
}

/// `subscriber` (or `subscriber_raw`) as templates see it: a view over one recipient's
/// values, borrowed, except escaped copies of the strings that escaping changes. Built
/// per recipient and part without a hash map of its own.
#[derive(Debug)]
struct SubscriberView<'a> {
    email: ScalarCow<'a>,
    name: ScalarCow<'a>,
    attributes: Members<'a>,
}

impl<'a> SubscriberView<'a> {
    fn new(ctx: &'a RenderContext, escaped: bool) -> Self {
        let name = ctx.name.as_deref().unwrap_or_default();
        let (email, name) = if escaped {
            (scalar(escape_html(&ctx.email)), scalar(escape_html(name)))
        } else {
            (ScalarCow::new(ctx.email.as_str()), ScalarCow::new(name))
        };
        SubscriberView {
            email,
            name,
            attributes: Members::new(&ctx.attributes, escaped),
        }
    }

    fn entries(&self) -> impl Iterator<Item = (&str, &dyn ValueView)> {
        [
            ("email", &self.email as &dyn ValueView),
            ("name", &self.name),
            ("attributes", &self.attributes),
        ]
        .into_iter()
    }

    fn lookup(&self, index: &str) -> Option<&dyn ValueView> {
        match index {
            "email" => Some(&self.email),
            "name" => Some(&self.name),
            "attributes" => Some(&self.attributes),
            _ => None,
        }
    }
}

/// A template's globals: the engine's four names over the plugins' top-level variables.
#[derive(Debug)]
struct Globals<'a> {
    subscriber: &'a SubscriberView<'a>,
    subscriber_raw: &'a SubscriberView<'a>,
    campaign: &'a Value,
    unsubscribe_url: ScalarCow<'a>,
    extra: &'a Members<'a>,
}

impl Globals<'_> {
    /// The names the engine sets at the top level; a plugin's variable of the same name
    /// is hidden by them.
    fn engine(&self) -> [(&'static str, &dyn ValueView); 4] {
        [
            ("subscriber", self.subscriber),
            ("subscriber_raw", self.subscriber_raw),
            ("campaign", self.campaign),
            ("unsubscribe_url", &self.unsubscribe_url),
        ]
    }

    /// The engine's names, then the plugins' variables that they do not hide.
    fn entries(&self) -> impl Iterator<Item = (&str, &dyn ValueView)> {
        let engine = self.engine().map(|(name, _)| name);
        let plugin_vars = self
            .extra
            .entries()
            .filter(move |(k, _)| !engine.contains(k));
        self.engine().into_iter().chain(plugin_vars)
    }

    fn lookup(&self, index: &str) -> Option<&dyn ValueView> {
        match index {
            "subscriber" => Some(self.subscriber),
            "subscriber_raw" => Some(self.subscriber_raw),
            "campaign" => Some(self.campaign),
            "unsubscribe_url" => Some(&self.unsubscribe_url),
            _ => self.extra.lookup(index),
        }
    }
}

/// Printing a whole view (rare: `{{ subscriber }}`) goes through an owned [`Object`].
fn owned_object<'k>(fields: impl Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)>) -> Value {
    Value::Object(
        fields
            .map(|(k, v)| (KString::from_ref(&k), v.to_value()))
            .collect(),
    )
}

/// The [`ValueView`] and [`ObjectView`] of a view over named fields, from its
/// `entries()` and `lookup()`: an object, empty when it has no entries, whose
/// whole-value forms go through [`owned_object`].
macro_rules! object_view {
    ($($view:ident),+) => {$(
        impl ValueView for $view<'_> {
            fn as_debug(&self) -> &dyn std::fmt::Debug {
                self
            }
            fn render(&self) -> DisplayCow<'_> {
                DisplayCow::Owned(Box::new(self.to_value().render().to_string()))
            }
            fn source(&self) -> DisplayCow<'_> {
                DisplayCow::Owned(Box::new(self.to_value().source().to_string()))
            }
            fn type_name(&self) -> &'static str {
                "object"
            }
            fn query_state(&self, state: State) -> bool {
                // As liquid's own objects: always truthy, blank only when empty.
                match state {
                    State::Truthy => true,
                    State::DefaultValue | State::Empty | State::Blank => {
                        self.entries().next().is_none()
                    }
                }
            }
            fn to_kstr(&self) -> KStringCow<'_> {
                KStringCow::from_string(self.to_value().render().to_string())
            }
            fn to_value(&self) -> Value {
                owned_object(self.iter())
            }
            fn as_object(&self) -> Option<&dyn ObjectView> {
                Some(self)
            }
        }

        impl ObjectView for $view<'_> {
            fn as_value(&self) -> &dyn ValueView {
                self
            }
            fn size(&self) -> i64 {
                self.entries().count() as i64
            }
            fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = KStringCow<'k>> + 'k> {
                Box::new(self.entries().map(|(k, _)| KStringCow::from_ref(k)))
            }
            fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
                Box::new(self.entries().map(|(_, v)| v))
            }
            fn iter<'k>(
                &'k self,
            ) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
                Box::new(self.entries().map(|(k, v)| (KStringCow::from_ref(k), v)))
            }
            fn contains_key(&self, index: &str) -> bool {
                self.lookup(index).is_some()
            }
            fn get<'s>(&'s self, index: &str) -> Option<&'s dyn ValueView> {
                self.lookup(index)
            }
        }
    )+};
}

object_view!(Members, SubscriberView, Globals);

impl CompiledTemplate {
    /// Renders subject, HTML and text for one recipient.
    ///
    /// The HTML body sees `subscriber` and the plugins' variables HTML-escaped; the
    /// subject and text see them raw. `subscriber_raw` is raw everywhere.
    pub fn render(&self, ctx: &RenderContext) -> Result<Rendered, RenderError> {
        self.render_into(ctx, None)
    }

    /// [`CompiledTemplate::render`], writing the HTML and text bodies into buffers taken
    /// from `buffers`; give them back ([`BufferPool::give_all`]) once they are sent.
    pub fn render_with(
        &self,
        ctx: &RenderContext,
        buffers: &BufferPool,
    ) -> Result<Rendered, RenderError> {
        self.render_into(ctx, Some(buffers))
    }

    fn render_into(
        &self,
        ctx: &RenderContext,
        buffers: Option<&BufferPool>,
    ) -> Result<Rendered, RenderError> {
        let buffer = || buffers.map_or_else(Vec::new, BufferPool::take);
        let raw = SubscriberView::new(ctx, false);
        let escaped = SubscriberView::new(ctx, true);
        let extra_raw = Members::new(&ctx.extra, false);
        let extra_escaped = Members::new(&ctx.extra, true);
        let globals = |subscriber, extra| Globals {
            subscriber,
            subscriber_raw: &raw,
            campaign: &ctx.campaign.0,
            unsubscribe_url: ScalarCow::new(ctx.unsubscribe_url.as_str()),
            extra,
        };
        let plain = globals(&raw, &extra_raw);
        let html_globals = globals(&escaped, &extra_escaped);
        let fail = |field| {
            move |e: liquid_core::Error| RenderError::Render {
                field,
                message: e.to_string(),
            }
        };
        let subject = self
            .subject
            .render(&plain, Vec::new())
            .map_err(fail("subject"))?;
        Ok(Rendered {
            subject: subject.replace(['\r', '\n'], " ").trim().to_owned(),
            html: self
                .html
                .render(&html_globals, buffer())
                .map_err(fail("html"))?,
            text: self
                .text
                .as_ref()
                .map(|t| t.render(&plain, buffer()).map_err(fail("text")))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renderer(enabled: bool) -> Renderer {
        Renderer::new(CacheConfig {
            enabled,
            ttl: Duration::from_secs(60),
            capacity: 2,
        })
    }

    fn ctx(name: &str) -> RenderContext {
        RenderContext {
            email: "ann@example.com".into(),
            name: Some(name.into()),
            attributes: serde_json::Map::new(),
            campaign: CampaignVars::new(&serde_json::json!({"id": 1, "name": "Spring"})),
            unsubscribe_url: "https://m.example/unsubscribe/t".into(),
            extra: serde_json::Map::new(),
        }
    }

    #[test]
    fn parse_error_names_the_line() {
        let err = renderer(true)
            .compile(TemplateSource {
                subject: "Hi",
                html: "<p>\n{% if x %}\nno end",
                text: None,
            })
            .unwrap_err();
        match err {
            RenderError::Parse { field, line, .. } => {
                assert_eq!(field, "html");
                assert!(line >= 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_body_rendered_into_a_kept_buffer_is_the_body_rendered_afresh() {
        let renderer = renderer(true);
        let t = renderer
            .compile(TemplateSource {
                subject: "Hi {{ subscriber.name }}",
                html: "<p>Hello {{ subscriber.name }}, {{ campaign.name }}</p>",
                text: Some("Hello {{ subscriber.name }}"),
            })
            .unwrap();
        let pool = renderer.buffers();
        // Buffers another message left, longer than this one's bodies.
        let mut kept = Vec::with_capacity(4096);
        kept.extend_from_slice("<p>the body of another recipient</p>".repeat(20).as_bytes());
        let kept_at = kept.as_ptr();
        pool.give_all([b"another text".to_vec(), kept]);
        let afresh = t.render(&ctx("<b>Ann</b>")).unwrap();
        let reused = t.render_with(&ctx("<b>Ann</b>"), pool).unwrap();
        assert_eq!(reused.subject, afresh.subject);
        assert_eq!(reused.html, afresh.html);
        assert_eq!(reused.text, afresh.text);
        // The HTML went into the last buffer given back, the text into the other one.
        assert_eq!(reused.html.as_ptr(), kept_at);
        assert_eq!(pool.kept_buffers(), 0);
        pool.give_all([reused.html.into_bytes()]);
        assert_eq!(pool.kept_buffers(), 1);
    }

    #[test]
    fn subscriber_values_are_escaped_in_html_but_not_in_subject() {
        let t = renderer(true)
            .compile(TemplateSource {
                subject: "Hi {{ subscriber.name }}",
                html: "<p>{{ subscriber.name }}</p><p>{{ subscriber_raw.name }}</p>",
                text: Some("Hi {{ subscriber.name }}"),
            })
            .unwrap();
        let out = t.render(&ctx("<b>Ann</b>")).unwrap();
        assert_eq!(out.subject, "Hi <b>Ann</b>");
        assert_eq!(out.html, "<p>&lt;b&gt;Ann&lt;/b&gt;</p><p><b>Ann</b></p>");
        assert_eq!(out.text.as_deref(), Some("Hi <b>Ann</b>"));
    }

    #[test]
    fn every_json_kind_reaches_the_template_and_escaping_reaches_nested_strings() {
        let t = renderer(true)
            .compile(TemplateSource {
                subject: "{{ subscriber.attributes.tags[1] }}",
                html: "{{ subscriber.attributes.big }}|{{ subscriber.attributes.n }}|\
                       {{ subscriber.attributes.ok }}|{{ subscriber.attributes.none | default: 'nil' }}|\
                       {{ subscriber.attributes.tags[1] }}|{{ subscriber.attributes.nested.x }}|\
                       {{ subscriber.email }}|{{ offer }}|{{ campaign.name }}",
                text: Some("{{ subscriber.attributes.nested.x }}|{{ offer }}"),
            })
            .unwrap();
        let mut c = ctx("Ann");
        c.email = "a&b@example.com".into();
        c.attributes = serde_json::json!({
            // Over i64::MAX: once emptied the whole context; now a float.
            "big": 18446744073709551615_u64,
            "n": -3,
            "ok": true,
            "none": null,
            "tags": ["x", "<y>"],
            "nested": {"x": "\"q\""},
        })
        .as_object()
        .cloned()
        .unwrap();
        c.extra.insert("offer".into(), "<20%>".into());
        c.campaign = CampaignVars::new(&serde_json::json!({"id": 1, "name": "A & B"}));
        let out = t.render(&c).unwrap();
        assert_eq!(out.subject, "<y>");
        assert_eq!(
            out.html,
            "18446744073709552000|-3|true|nil|&lt;y&gt;|&quot;q&quot;|a&amp;b@example.com|&lt;20%&gt;|A & B"
        );
        assert_eq!(out.text.as_deref(), Some("\"q\"|<20%>"));
    }

    #[test]
    fn the_globals_and_the_subscriber_behave_as_objects_in_loops_filters_and_conditions() {
        let t = renderer(true)
            .compile(TemplateSource {
                subject: "{{ subscriber | size }}|{{ subscriber_raw.attributes.city }}",
                html: "{% for field in subscriber %}{{ field[0] }},{% endfor %}|\
                       {% if subscriber.nope %}yes{% else %}no{% endif %}|\
                       {% if subscriber.attributes.city == 'Oslo' %}oslo{% endif %}|\
                       {{ offer }}|\
                       {% if campaign %}{{ campaign.id | plus: 1 }}{% endif %}",
                text: Some("{{ subscriber.attributes }}|{{ subscriber_raw }}"),
            })
            .unwrap();
        let mut c = ctx("Ann");
        c.attributes.insert("city".into(), "Oslo".into());
        c.extra.insert("offer".into(), 5.into());
        let out = t.render(&c).unwrap();
        assert_eq!(out.subject, "3|Oslo");
        let (fields, rest) = out.html.split_once('|').unwrap();
        let mut fields: Vec<&str> = fields.split_terminator(',').collect();
        fields.sort_unstable();
        assert_eq!(fields, ["attributes", "email", "name"]);
        assert_eq!(rest, "no|oslo|5|2");
        // Printed whole, an object is its keys and values run together (Liquid's own
        // rendering of an object, in its own order).
        let text = out.text.unwrap();
        let (attributes, whole) = text.split_once('|').unwrap();
        assert_eq!(attributes, "cityOslo");
        for part in ["emailann@example.com", "nameAnn", "attributescityOslo"] {
            assert!(whole.contains(part), "{part} in {whole}");
        }
    }

    /// `lookup` matches names for speed beside `entries`, which lists them: a name in
    /// one and not the other would make an object that lists what it cannot find.
    #[test]
    fn the_views_find_every_name_they_list() {
        let mut c = ctx("Ann");
        c.attributes.insert("city".into(), "Oslo".into());
        c.extra.insert("offer".into(), 5.into());
        let subscriber = SubscriberView::new(&c, false);
        let extra = Members::new(&c.extra, false);
        let globals = Globals {
            subscriber: &subscriber,
            subscriber_raw: &subscriber,
            campaign: &c.campaign.0,
            unsubscribe_url: ScalarCow::new(c.unsubscribe_url.as_str()),
            extra: &extra,
        };
        let mut listed: Vec<&str> = subscriber.entries().map(|(k, _)| k).collect();
        listed.sort_unstable();
        assert_eq!(listed, ["attributes", "email", "name"]);
        for name in listed {
            assert!(subscriber.lookup(name).is_some(), "{name}");
        }
        let mut listed: Vec<&str> = globals.entries().map(|(k, _)| k).collect();
        listed.sort_unstable();
        assert_eq!(
            listed,
            [
                "campaign",
                "offer",
                "subscriber",
                "subscriber_raw",
                "unsubscribe_url"
            ]
        );
        for name in listed {
            assert!(globals.lookup(name).is_some(), "{name}");
        }
        assert!(subscriber.attributes.lookup("city").is_some());
    }

    #[test]
    fn escaping_copies_only_strings_it_changes() {
        assert!(matches!(escape_html("ann@example.com"), Cow::Borrowed(_)));
        assert_eq!(
            escape_html("Zoë & \"Jo's\" <b>"),
            "Zoë &amp; &quot;Jo&#39;s&quot; &lt;b&gt;"
        );
        let t = renderer(true)
            .compile(TemplateSource {
                subject: "{{ subscriber.attributes.q }}",
                html: "{{ subscriber.attributes.q }}|{{ subscriber.attributes.q | upcase }}|\
                       {{ subscriber.attributes.plain | upcase }}",
                text: None,
            })
            .unwrap();
        let mut c = ctx("Ann");
        c.attributes.insert("q".into(), "Tom & <Jerry>".into());
        c.attributes.insert("plain".into(), "oslo".into());
        let out = t.render(&c).unwrap();
        assert_eq!(out.subject, "Tom & <Jerry>");
        assert_eq!(
            out.html,
            "Tom &amp; &lt;Jerry&gt;|TOM &AMP; &LT;JERRY&GT;|OSLO"
        );
    }

    /// An unknown-index error with its list of available indexes sorted (liquid's own
    /// objects list them in their hash map's order).
    fn sorted_indexes(message: String) -> String {
        message
            .lines()
            .map(|line| match line.split_once("available indexes=") {
                Some((head, list)) => {
                    let mut names: Vec<&str> = list.split(", ").collect();
                    names.sort_unstable();
                    format!("{head}available indexes={}", names.join(", "))
                }
                None => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Attributes reach templates through [`Members`], not a liquid object: every way
    /// a template can read them prints what liquid's own objects print.
    #[test]
    fn attributes_read_as_liquid_s_own_objects_read() {
        let cases = [
            serde_json::json!({}),
            serde_json::json!({"city": "Oslo"}),
            serde_json::json!({
                "b": 2, "a": "x", "tags": ["t1", "t2", "t3"], "nested": {"k": [1, 2]},
                "none": null, "yes": true, "empty": "", "list": [], "obj": {}
            }),
        ];
        // `@` stands for `subscriber.attributes`.
        let templates = [
            "{{ @.size }}|{{ @ | size }}|{% if @ %}t{% else %}f{% endif %}",
            "{% if @ == empty %}e{% endif %}{% if @ == blank %}b{% endif %}{{ @ | default: 'd' | size }}",
            "{{ @.city | default: 'nowhere' }}|{{ @.tags.first }}{{ @.tags.last }}{{ @.tags.size }}",
            "{{ @.tags[1] }}|{{ @.nested.k[0] }}{{ @.nested.k.size }}|{{ @.nested.nope }}",
            "{% for t in @.tags %}{{ t }}{% endfor %}|{{ @.b | plus: 1 }}|{{ @.zzz }}",
            "{% if @.none %}n{% endif %}{% if @.yes %}y{% endif %}{{ @.empty | default: 'E' }}",
            "{{ @.list | default: 'L' }}|{{ @.obj | default: 'O' }}|{% if @.obj == empty %}oe{% endif %}",
            "{% assign c = @ %}{{ c.a }}{{ c.size }}|{% if @.a == 'x' %}x{% endif %}{% if @.b > 1 %}g{% endif %}",
            "{{ @.a.size }}|{{ @.tags | join: ',' }}|{{ @['a'] }}{{ @.nested['k'].last }}",
        ];
        let parser = liquid::ParserBuilder::with_stdlib()
            .build()
            .expect("the standard library builds");
        for attributes in cases {
            let map = attributes.as_object().cloned().unwrap_or_default();
            let theirs_globals = liquid::object!({
                "subscriber": {"attributes": liquid::model::to_value(&attributes).unwrap()}
            });
            let mut c = ctx("Ann");
            c.attributes = map;
            for template in templates {
                let source = template.replace('@', "subscriber.attributes");
                let theirs = parser
                    .parse(&source)
                    .expect("the template parses")
                    .render(&theirs_globals)
                    .map_err(|e| e.to_string());
                let ours = renderer(false)
                    .compile(TemplateSource {
                        subject: "s",
                        html: "h",
                        text: Some(&source),
                    })
                    .expect("the template compiles")
                    .render(&c)
                    .map(|r| r.text.unwrap_or_default())
                    .map_err(|e| match e {
                        RenderError::Render { message, .. } => message,
                        other => other.to_string(),
                    });
                assert_eq!(
                    ours.map_err(sorted_indexes),
                    theirs.map_err(sorted_indexes),
                    "{source} with {attributes}"
                );
            }
        }
    }

    #[test]
    fn the_engine_s_variables_win_over_a_plugin_s_of_the_same_name() {
        let t = renderer(true)
            .compile(TemplateSource {
                subject: "{{ unsubscribe_url }}",
                html: "{{ subscriber.name }}",
                text: None,
            })
            .unwrap();
        let mut c = ctx("Ann");
        c.extra
            .insert("unsubscribe_url".into(), "https://evil.example".into());
        c.extra
            .insert("subscriber".into(), serde_json::json!({"name": "Eve"}));
        let out = t.render(&c).unwrap();
        assert_eq!(out.subject, "https://m.example/unsubscribe/t");
        assert_eq!(out.html, "Ann");
    }

    #[test]
    fn cache_counts_hits_and_misses_and_clears() {
        let r = renderer(true);
        let src = TemplateSource {
            subject: "s",
            html: "h",
            text: None,
        };
        r.compiled(1, 10, src).unwrap();
        r.compiled(1, 10, src).unwrap();
        r.compiled(1, 11, src).unwrap();
        let s = r.stats();
        assert_eq!((s.hits, s.misses, s.size), (1, 2, 2));
        assert_eq!(r.clear(), 2);
        assert_eq!(r.stats().size, 0);
    }

    #[test]
    fn disabled_cache_always_compiles() {
        let r = renderer(false);
        let src = TemplateSource {
            subject: "s",
            html: "h",
            text: None,
        };
        r.compiled(1, 10, src).unwrap();
        r.compiled(1, 10, src).unwrap();
        assert_eq!((r.stats().hits, r.stats().misses), (0, 2));
    }
}

//! Liquid rendering: validation of template sources (with the line of a parse error),
//! a cache of compiled templates (moka: LRU bounded by entries, TTL from
//! `TEMPLATE_CACHE_TTL`, with hit/miss/eviction counters), and the per-recipient context.
//!
//! Subscriber-controlled values (name, attributes) are HTML-escaped in the HTML body's
//! `subscriber` object; the unescaped values are under `subscriber_raw` for templates
//! that need them. Subject and text bodies get the raw values.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use liquid::model::{KString, Object, Value};
use serde::Serialize;

/// The most bytes of one template part (subject, HTML or text).
pub const MAX_TEMPLATE_BYTES: usize = 512 * 1024;

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
    subject: liquid::Template,
    html: liquid::Template,
    text: Option<liquid::Template>,
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
    parser: Arc<liquid::Parser>,
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
        let parser = liquid::ParserBuilder::with_stdlib()
            .build()
            .unwrap_or_else(|_| liquid::Parser::new());
        Renderer {
            parser: Arc::new(parser),
            cache,
            config,
            hits: Arc::new(AtomicU64::new(0)),
            misses: Arc::new(AtomicU64::new(0)),
            evictions,
        }
    }

    fn parse_part(
        &self,
        field: &'static str,
        source: &str,
    ) -> Result<liquid::Template, RenderError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(RenderError::TooLarge { field });
        }
        self.parser.parse(source).map_err(|e| {
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
    pub campaign: serde_json::Value,
    /// `unsubscribe_url`.
    pub unsubscribe_url: String,
    /// Variables plugins or the caller add at the top level.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Escapes the five HTML-significant characters.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
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
        serde_json::Value::String(s) if escaped => Value::scalar(escape_html(s)),
        serde_json::Value::String(s) => Value::scalar(s.clone()),
        serde_json::Value::Array(a) => {
            Value::Array(a.iter().map(|v| to_liquid(v, escaped)).collect())
        }
        serde_json::Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (KString::from_ref(k), to_liquid(v, escaped)))
                .collect(),
        ),
    }
}

fn text(s: &str, escaped: bool) -> Value {
    if escaped {
        Value::scalar(escape_html(s))
    } else {
        Value::scalar(s.to_owned())
    }
}

impl RenderContext {
    fn subscriber(&self, escaped: bool) -> Value {
        let mut subscriber = Object::new();
        subscriber.insert("email".into(), text(&self.email, escaped));
        subscriber.insert(
            "name".into(),
            text(self.name.as_deref().unwrap_or_default(), escaped),
        );
        subscriber.insert(
            "attributes".into(),
            Value::Object(
                self.attributes
                    .iter()
                    .map(|(k, v)| (KString::from_ref(k), to_liquid(v, escaped)))
                    .collect(),
            ),
        );
        Value::Object(subscriber)
    }

    /// The template's globals: `extra` at the top level, `subscriber` (escaped when
    /// `escaped`), `subscriber_raw`, `campaign` and `unsubscribe_url`.
    fn object(&self, escaped: bool) -> Object {
        let mut root: Object = self
            .extra
            .iter()
            .map(|(k, v)| (KString::from_ref(k), to_liquid(v, escaped)))
            .collect();
        let raw = self.subscriber(false);
        let subscriber = if escaped {
            self.subscriber(true)
        } else {
            raw.clone()
        };
        root.insert("subscriber".into(), subscriber);
        root.insert("subscriber_raw".into(), raw);
        root.insert("campaign".into(), to_liquid(&self.campaign, false));
        root.insert(
            "unsubscribe_url".into(),
            Value::scalar(self.unsubscribe_url.clone()),
        );
        root
    }
}

impl CompiledTemplate {
    /// Renders subject, HTML and text for one recipient.
    pub fn render(&self, ctx: &RenderContext) -> Result<Rendered, RenderError> {
        let plain = ctx.object(false);
        let escaped = ctx.object(true);
        let fail = |field| {
            move |e: liquid::Error| RenderError::Render {
                field,
                message: e.to_string(),
            }
        };
        let subject = self.subject.render(&plain).map_err(fail("subject"))?;
        Ok(Rendered {
            subject: subject.replace(['\r', '\n'], " ").trim().to_owned(),
            html: self.html.render(&escaped).map_err(fail("html"))?,
            text: self
                .text
                .as_ref()
                .map(|t| t.render(&plain).map_err(fail("text")))
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
            campaign: serde_json::json!({"id": 1, "name": "Spring"}),
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
        c.campaign = serde_json::json!({"id": 1, "name": "A & B"});
        let out = t.render(&c).unwrap();
        assert_eq!(out.subject, "<y>");
        assert_eq!(
            out.html,
            "18446744073709552000|-3|true|nil|&lt;y&gt;|&quot;q&quot;|a&amp;b@example.com|&lt;20%&gt;|A & B"
        );
        assert_eq!(out.text.as_deref(), Some("\"q\"|<20%>"));
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

//! How a compiled template runs: the Liquid standard library as one [`Language`], and
//! the runtime a template renders in.
//!
//! liquid's own runtime (`liquid::Template::render`) keeps the globals in a frame that
//! hands out an owned copy of every variable it finds, so each `{{ subscriber.name }}`
//! allocates and copies the value before printing it. [`Part::render`] builds the same
//! stack of frames, but its globals frame ([`Lending`]) lends the recipient's values to
//! the template instead. What a template can do and what it prints are unchanged: the
//! tests below render the same templates through both runtimes and compare.

use std::cell::RefCell;
use std::collections::BTreeSet;

use liquid_core::model::{
    KString, KStringCow, KStringRef, Object, ObjectView, ScalarCow, Value, ValueCow, ValueView,
};
use liquid_core::parser::{ParseBlock, ParseFilter, ParseTag, PluginRegistry};
use liquid_core::runtime::{GlobalFrame, PartialStore, Registers, RuntimeCore};
use liquid_core::{Error, Language, Renderable, Runtime, Template};

/// The Liquid standard library: the tags, blocks and filters of
/// `liquid::ParserBuilder::with_stdlib` (a test checks the two lists agree).
pub(super) fn stdlib() -> Language {
    use liquid_lib::stdlib as std;
    let mut language = Language::empty();
    let tags: [Box<dyn ParseTag>; 8] = [
        Box::new(std::AssignTag),
        Box::new(std::BreakTag),
        Box::new(std::ContinueTag),
        Box::new(std::CycleTag),
        Box::new(std::IncludeTag),
        Box::new(std::IncrementTag),
        Box::new(std::DecrementTag),
        Box::new(std::RenderTag),
    ];
    register(&mut language.tags, tags, |t| t.reflection().tag());
    let blocks: [Box<dyn ParseBlock>; 9] = [
        Box::new(std::RawBlock),
        Box::new(std::IfBlock),
        Box::new(std::UnlessBlock),
        Box::new(std::IfChangedBlock),
        Box::new(std::ForBlock),
        Box::new(std::TableRowBlock),
        Box::new(std::CommentBlock),
        Box::new(std::CaptureBlock),
        Box::new(std::CaseBlock),
    ];
    register(&mut language.blocks, blocks, |b| b.reflection().start_tag());
    let filters: [Box<dyn ParseFilter>; 48] = [
        Box::new(std::Abs),
        Box::new(std::Append),
        Box::new(std::AtLeast),
        Box::new(std::AtMost),
        Box::new(std::Capitalize),
        Box::new(std::Ceil),
        Box::new(std::Compact),
        Box::new(std::Concat),
        Box::new(std::Date),
        Box::new(std::Default),
        Box::new(std::DividedBy),
        Box::new(std::Downcase),
        Box::new(std::Escape),
        Box::new(std::EscapeOnce),
        Box::new(std::First),
        Box::new(std::Floor),
        Box::new(std::Join),
        Box::new(std::Last),
        Box::new(std::Lstrip),
        Box::new(std::Map),
        Box::new(std::Minus),
        Box::new(std::Modulo),
        Box::new(std::NewlineToBr),
        Box::new(std::Plus),
        Box::new(std::Prepend),
        Box::new(std::Remove),
        Box::new(std::RemoveFirst),
        Box::new(std::Replace),
        Box::new(std::ReplaceFirst),
        Box::new(std::Reverse),
        Box::new(std::Round),
        Box::new(std::Rstrip),
        Box::new(std::Size),
        Box::new(std::Slice),
        Box::new(std::Sort),
        Box::new(std::SortNatural),
        Box::new(std::Split),
        Box::new(std::Strip),
        Box::new(std::StripHtml),
        Box::new(std::StripNewlines),
        Box::new(std::Times),
        Box::new(std::Truncate),
        Box::new(std::TruncateWords),
        Box::new(std::Uniq),
        Box::new(std::Upcase),
        Box::new(std::UrlDecode),
        Box::new(std::UrlEncode),
        Box::new(std::Where),
    ];
    register(&mut language.filters, filters, |f| f.reflection().name());
    language
}

/// Registers each plugin under the name its reflection gives, as liquid's
/// `ParserBuilder` does.
fn register<P>(
    registry: &mut PluginRegistry<P>,
    plugins: impl IntoIterator<Item = P>,
    name: fn(&P) -> &str,
) {
    for plugin in plugins {
        registry.register(name(&plugin).to_owned(), plugin);
    }
}

/// A compiled template part and the size its output is expected to have.
#[derive(Debug)]
pub(super) struct Part {
    template: Template,
    /// The source's length: the first guess of the output's, so the buffer is
    /// allocated once for most messages and a subject does not get a body's buffer.
    source_len: usize,
}

impl Part {
    /// Parses one template part in the standard library's language.
    pub(super) fn parse(source: &str, language: &Language) -> Result<Self, Error> {
        Ok(Part {
            template: Template::new(liquid_core::parser::parse(source, language)?),
            source_len: source.len(),
        })
    }

    /// Renders the part with `globals` as its top-level variables into `out` (cleared
    /// first; a kept buffer or a new one).
    pub(super) fn render(
        &self,
        globals: &dyn ObjectView,
        mut out: Vec<u8>,
    ) -> Result<String, Error> {
        let runtime = GlobalFrame::new(Lending::new(globals));
        out.clear();
        out.reserve(self.source_len + self.source_len / 4);
        self.template.render_to(&mut out, &runtime)?;
        // Every input and filter of the standard library keeps UTF-8; this only turns
        // a broken promise into an error instead of a bad message.
        String::from_utf8(out).map_err(|e| Error::with_msg(e.to_string()))
    }
}

/// The frame under a template's assigned variables: the globals, lent, and the counters
/// of `increment` and `decrement` (liquid's own `IndexFrame`, which its crate keeps
/// private). Lookups that miss both fall to liquid's core, which reports the unknown
/// variable.
struct Lending<'g> {
    globals: &'g dyn ObjectView,
    indexes: RefCell<Object>,
    core: RuntimeCore<'static>,
}

impl<'g> Lending<'g> {
    fn new(globals: &'g dyn ObjectView) -> Self {
        Lending {
            globals,
            indexes: RefCell::new(Object::new()),
            core: RuntimeCore::new(),
        }
    }
}

impl Runtime for Lending<'_> {
    fn partials(&self) -> &dyn PartialStore {
        self.core.partials()
    }

    fn name(&self) -> Option<KStringRef<'_>> {
        None
    }

    fn roots(&self) -> BTreeSet<KStringCow<'_>> {
        let mut roots: BTreeSet<KStringCow<'_>> = self.globals.keys().collect();
        roots.extend(self.indexes.borrow().keys().map(|k| k.clone().into()));
        roots
    }

    fn try_get(&self, path: &[ScalarCow<'_>]) -> Option<ValueCow<'_>> {
        let (first, rest) = path.split_first()?;
        let key = first.to_kstr();
        if let Some(root) = self.globals.get(key.as_str()) {
            return liquid_core::model::try_find(root, rest);
        }
        let indexes = self.indexes.borrow();
        if indexes.contains_key(key.as_str()) {
            return liquid_core::model::try_find(indexes.as_value(), path)
                .map(|v| v.into_owned().into());
        }
        self.core.try_get(path)
    }

    fn get(&self, path: &[ScalarCow<'_>]) -> liquid_core::Result<ValueCow<'_>> {
        let Some((first, rest)) = path.split_first() else {
            return self.core.get(path);
        };
        let key = first.to_kstr();
        // The root found once, the rest walked from it; a miss is looked up again from
        // the top so that the error names the whole path, as liquid's own does.
        if let Some(root) = self.globals.get(key.as_str()) {
            return match liquid_core::model::try_find(root, rest) {
                Some(found) => Ok(found),
                None => liquid_core::model::find(self.globals.as_value(), path),
            };
        }
        let indexes = self.indexes.borrow();
        if indexes.contains_key(key.as_str()) {
            return liquid_core::model::find(indexes.as_value(), path)
                .map(|v| v.into_owned().into());
        }
        self.core.get(path)
    }

    fn set_global(&self, name: KString, val: Value) -> Option<Value> {
        // Masked by the `GlobalFrame` above, as in liquid's own stack.
        self.core.set_global(name, val)
    }

    fn set_index(&self, name: KString, val: Value) -> Option<Value> {
        self.indexes.borrow_mut().insert(name, val)
    }

    fn get_index<'a>(&'a self, name: &str) -> Option<ValueCow<'a>> {
        self.indexes.borrow().get(name).map(|v| v.to_value().into())
    }

    fn registers(&self) -> &Registers {
        self.core.registers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liquid::reflection::ParserReflection;

    fn names<'a>(list: impl Iterator<Item = &'a str>) -> Vec<String> {
        let mut names: Vec<String> = list.map(str::to_owned).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn the_language_is_liquid_s_standard_library() {
        let ours = stdlib();
        let theirs = liquid::ParserBuilder::with_stdlib();
        assert_eq!(
            names(ours.tags.plugin_names()),
            names(theirs.tags().map(|t| t.tag()))
        );
        assert_eq!(
            names(ours.blocks.plugin_names()),
            names(theirs.blocks().map(|b| b.start_tag()))
        );
        assert_eq!(
            names(ours.filters.plugin_names()),
            names(theirs.filters().map(|f| f.name()))
        );
    }

    /// Renders `source` through liquid's own runtime and through [`Part::render`].
    fn both(source: &str, globals: &Object) -> (Result<String, String>, Result<String, String>) {
        let theirs = liquid::ParserBuilder::with_stdlib()
            .build()
            .expect("the standard library builds")
            .parse(source)
            .expect("the template parses")
            .render(globals)
            .map_err(|e| e.to_string());
        let ours = Part::parse(source, &stdlib())
            .expect("the template parses")
            .render(globals, b"left over from another message".to_vec())
            .map_err(|e| e.to_string());
        (theirs, ours)
    }

    #[test]
    fn templates_print_what_liquid_s_own_runtime_prints() {
        let globals = liquid::object!({
            "name": "Ann",
            "user": {"city": "Oslo", "tags": ["a", "b", "c"], "orders": 21},
            "items": [{"n": 1}, {"n": 2}, {"n": 3}],
            "empty": [],
        });
        let templates = [
            "{{ name }} in {{ user.city }}: {{ user.tags[1] }} {{ user.tags.first }} {{ user.tags.size }}",
            "{{ name | upcase | append: '!' }} {{ missing | default: 'x' }} {{ user.orders | plus: 1 }}",
            "{% for i in items %}{{ i.n }}{% if forloop.last %}.{% else %},{% endif %}{% endfor %}",
            "{% for t in user.tags reversed limit: 2 %}{{ t }}{% else %}none{% endfor %}{% for e in empty %}x{% else %}none{% endfor %}",
            "{% assign name = 'Bob' %}{{ name }} {% assign city = user.city %}{{ city }}",
            "{% capture greeting %}Hi {{ name }}{% endcapture %}{{ greeting }}",
            "{% increment c %}{% increment c %}{% decrement d %}{{ c }}",
            "{% cycle 'a', 'b' %}{% cycle 'a', 'b' %}{% cycle 'a', 'b' %}",
            "{% case user.city %}{% when 'Oslo' %}north{% else %}other{% endcase %}",
            "{% unless user.orders > 20 %}few{% else %}many{% endunless %}",
            "{% for i in (1..5) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}{% endif %}{{ i }}{% endfor %}",
            "{% tablerow t in user.tags cols: 2 %}{{ t }}{% endtablerow %}",
            "{% for i in items %}{% ifchanged %}{{ user.city }}{% endifchanged %}{% endfor %}",
            "{{ user.tags | join: '-' }} {{ items | map: 'n' | join: '+' }} {{ user | size }}",
            "{% raw %}{{ name }}{% endraw %}{% comment %}{{ hidden }}{% endcomment %}",
            "{{ nope }}",
            "{{ user.nope.deeper }}",
            "{% include 'other' %}",
        ];
        for template in templates {
            let (theirs, ours) = both(template, &globals);
            assert_eq!(ours, theirs, "{template}");
        }
    }

    #[test]
    fn a_missing_variable_is_the_same_error() {
        let (theirs, ours) = both("{{ user.nope }}", &liquid::object!({"user": {"a": 1}}));
        assert!(theirs.is_err(), "{theirs:?}");
        assert_eq!(ours, theirs);
    }
}

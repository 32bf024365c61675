// `greeting`, in JavaScript: the same behaviour and config as the Rust crate
// `plugins/examples/greeting` (see its lib.rs), built into a component by componentize-js
// (`build-js.sh`).
//
// Reads the `lang` attribute ("fr", "fr-CA", "pt_BR": whole tag, then primary subtag,
// then `default_lang`) and keeps every recipient with {"greeting": "Bonjour Marie"}, or
// just the word when there is no name.
//
// Config (optional, `null` = defaults): {"default_lang": "en", "greetings": {"xx": "Custom"}}.
// A wrong type, an empty word or an unknown key is refused with `invalid-config`.

import { log } from 'mailing:plugin/host@0.1.0';

const BUILTIN = {
  en: 'Hello', fr: 'Bonjour', de: 'Hallo', es: 'Hola', it: 'Ciao', pt: 'Olá', nl: 'Hallo',
  sv: 'Hej', da: 'Hej', nb: 'Hei', no: 'Hei', fi: 'Hei', pl: 'Cześć',
};

let config = null;

const normalise = (tag) => tag.trim().toLowerCase().replaceAll('_', '-');

const kind = (v) => v === null ? 'null' : Array.isArray(v) ? 'an array'
  : typeof v === 'object' ? 'an object' : typeof v === 'string' ? 'a string'
  : typeof v === 'number' ? 'a number' : typeof v === 'boolean' ? 'a boolean' : typeof v;

function wordFor(words, tag) {
  const t = normalise(tag);
  if (Object.hasOwn(words, t)) return words[t];
  const primary = t.split('-')[0];
  return Object.hasOwn(words, primary) ? words[primary] : undefined;
}

// An `error` value of the WIT contract: componentize-js turns a thrown `{ payload }`
// (or the thrown value itself) into the `err` case of the result.
const invalidConfig = (message) => ({ payload: { tag: 'invalid-config', val: `greeting: ${message}` } });
const failed = (message) => ({ payload: { tag: 'failed', val: `greeting: ${message}` } });

function parseConfig(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw invalidConfig(`the config is not valid JSON: ${e.message}`);
  }
  const words = { ...BUILTIN };
  let defaultLang = 'en';
  if (value !== null) {
    if (typeof value !== 'object' || Array.isArray(value)) {
      throw invalidConfig(`the config must be a JSON object or null, not ${kind(value)}`);
    }
    for (const [key, v] of Object.entries(value)) {
      if (key === 'default_lang') {
        if (v === null) continue;
        if (typeof v !== 'string') throw invalidConfig(`"default_lang" must be a string, not ${kind(v)}`);
        defaultLang = normalise(v);
        if (!defaultLang) throw invalidConfig('"default_lang" must not be empty');
      } else if (key === 'greetings') {
        if (v === null) continue;
        if (typeof v !== 'object' || Array.isArray(v)) {
          throw invalidConfig(`"greetings" must be an object of language to word, not ${kind(v)}`);
        }
        for (const [tag, word] of Object.entries(v)) {
          const t = normalise(tag);
          if (!t) throw invalidConfig('"greetings" has an empty language tag');
          if (typeof word !== 'string') {
            throw invalidConfig(`the greeting for "${tag}" must be a string, not ${kind(word)}`);
          }
          if (!word.trim()) throw invalidConfig(`the greeting for "${tag}" must not be empty`);
          words[t] = word.trim();
        }
      } else {
        throw invalidConfig(`unknown config key "${key}" (known: "default_lang", "greetings")`);
      }
    }
  }
  const defaultWord = wordFor(words, defaultLang);
  if (defaultWord === undefined) {
    throw invalidConfig(`"default_lang" is "${defaultLang}", which has no greeting; add it to "greetings"`);
  }
  return { words, defaultLang, defaultWord };
}

export const personalize = {
  init(text) {
    config = parseConfig(text);
    log('debug', `greeting (js): ready, ${Object.keys(config.words).length} languages, default "${config.defaultLang}" (${config.defaultWord})`);
  },

  batch(_ctx, recipients) {
    if (config === null) throw failed('batch called before init');
    return recipients.map((r) => {
      let attributes;
      try {
        attributes = JSON.parse(r.attributes);
      } catch (e) {
        throw failed(`the attributes of recipient ${r.id} are not valid JSON: ${e.message}`);
      }
      if (attributes === null || typeof attributes !== 'object' || Array.isArray(attributes)) {
        throw failed(`the attributes of recipient ${r.id} are ${kind(attributes)}, not a JSON object`);
      }
      const lang = attributes.lang;
      const word = (typeof lang === 'string' && wordFor(config.words, lang)) || config.defaultWord;
      const name = typeof r.name === 'string' ? r.name.trim() : '';
      const greeting = name ? `${word} ${name}` : word;
      return { tag: 'keep', val: { variables: JSON.stringify({ greeting }) } };
    });
  },
};

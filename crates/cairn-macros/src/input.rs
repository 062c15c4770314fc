//! Reading a `#[derive(Event)]` input: the enum, its `#[event(...)]` attributes, and every
//! check that turns a mistake into a compile error.
//!
//! The result is an [`EventEnum`], a model with nothing left to check: each variant has
//! its final type name and version, names are unique, shapes are supported. Errors are
//! collected rather than returned at the first, so one build shows every mistake, each
//! pointed at the tokens to change.

use std::collections::HashMap;

use proc_macro2::Span;
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Data, DeriveInput, Error, Field, Fields, Ident, Lit, Result, Variant};

/// The longest event type name a store accepts, in bytes (`cairn_core::MAX_EVENT_TYPE_LEN`).
const MAX_NAME_LEN: usize = 256;

/// An event enum, checked.
pub(crate) struct EventEnum {
    /// The enum's name.
    pub(crate) ident: Ident,
    /// Its variants, in declaration order.
    pub(crate) variants: Vec<EventVariant>,
}

/// One variant: one event type.
pub(crate) struct EventVariant {
    /// The Rust name of the variant.
    pub(crate) ident: Ident,
    /// The stable type name stored with each event.
    pub(crate) name: String,
    /// The current schema version, 1 or more.
    pub(crate) version: u32,
    /// What the variant carries.
    pub(crate) shape: Shape,
}

/// What a variant carries, and so how its payload looks.
pub(crate) enum Shape {
    /// `Opened`: the payload is `{}`.
    Unit,
    /// `Opened(Details)`: the payload is the inner value's.
    Newtype(Box<Field>),
    /// `Opened { owner: String }`: the payload is an object of the fields.
    Struct(Vec<Field>),
}

impl EventEnum {
    /// Checks `input` and builds the model.
    ///
    /// # Errors
    ///
    /// Every mistake found, combined into one [`Error`]: not an enum, generics, no
    /// variants, an unsupported variant shape, a malformed or unknown `#[event]` key, a
    /// missing or zero version, an invalid or duplicate type name.
    pub(crate) fn from_input(input: &DeriveInput) -> Result<Self> {
        let data = match &input.data {
            Data::Enum(data) => data,
            Data::Struct(data) => {
                return Err(not_an_enum(&data.struct_token, &input.ident, "a struct"));
            }
            Data::Union(data) => {
                return Err(not_an_enum(&data.union_token, &input.ident, "a union"));
            }
        };

        let mut errors = Errors::default();
        if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
            errors.push(Error::new_spanned(
                &input.generics,
                "`#[derive(Event)]` does not support generic enums: an event enum names \
                 concrete types, so that every stored event decodes to one Rust type",
            ));
        }
        if data.variants.is_empty() {
            errors.push(Error::new(
                input.ident.span(),
                "`#[derive(Event)]` needs at least one variant: each variant is an event type",
            ));
        }

        let defaults = errors.take(EventAttrs::parse(&input.attrs, Place::Enum));
        let default_version = defaults.as_ref().and_then(|attrs| attrs.version);
        // With the enum's own attribute in error, its default version is unknown: a
        // variant without a version is then not reported as one more mistake.
        let versions_known = defaults.is_some();

        let mut variants = Vec::with_capacity(data.variants.len());
        // Type name -> the variant that first took it.
        let mut names: HashMap<String, Ident> = HashMap::new();
        for variant in &data.variants {
            let attrs = errors.take(EventAttrs::parse(&variant.attrs, Place::Variant));
            let shape = errors.take(Shape::of(variant));
            let Some(attrs) = attrs else { continue };

            let (name, name_span) = match attrs.name {
                Some((name, span)) => (name, span),
                None => (variant.ident.unraw().to_string(), variant.ident.span()),
            };
            if let Err(error) = check_name(&name, name_span) {
                errors.push(error);
            } else if let Some(first) = names.get(&name) {
                errors.push(Error::new(
                    name_span,
                    format!(
                        "duplicate event type name `{name}`: variant `{}` already has it; \
                         give one of them another `#[event(name = \"...\")]`",
                        first.unraw()
                    ),
                ));
            } else {
                names.insert(name.clone(), variant.ident.clone());
            }

            let version = match attrs.version.or(default_version) {
                Some(version) => version,
                None if !versions_known => continue,
                None => {
                    errors.push(Error::new(
                        variant.ident.span(),
                        format!(
                            "variant `{}` has no schema version: add `#[event(version = 1)]` \
                             to the variant, or to the enum as the default of every variant",
                            variant.ident.unraw()
                        ),
                    ));
                    continue;
                }
            };
            if let Some(shape) = shape {
                variants.push(EventVariant {
                    ident: variant.ident.clone(),
                    name,
                    version,
                    shape,
                });
            }
        }

        errors.finish()?;
        Ok(Self {
            ident: input.ident.clone(),
            variants,
        })
    }
}

impl Shape {
    /// The shape of `variant`, or an error for a tuple variant of other than one field.
    /// Also refuses `#[event]` on fields, where it means nothing.
    fn of(variant: &Variant) -> Result<Self> {
        let mut errors = Errors::default();
        for field in &variant.fields {
            for attr in field
                .attrs
                .iter()
                .filter(|attr| attr.path().is_ident("event"))
            {
                errors.push(Error::new_spanned(
                    attr,
                    "`#[event]` does not apply to fields; to rename or default a field in \
                     the payload, use `#[serde(...)]`",
                ));
            }
        }
        let shape = match &variant.fields {
            Fields::Unit => Ok(Self::Unit),
            Fields::Named(fields) => Ok(Self::Struct(fields.named.iter().cloned().collect())),
            Fields::Unnamed(fields) => match (fields.unnamed.first(), fields.unnamed.len()) {
                (Some(field), 1) => Ok(Self::Newtype(Box::new(field.clone()))),
                (_, count) => {
                    let ident = variant.ident.unraw();
                    Err(Error::new_spanned(
                        fields,
                        format!(
                            "variant `{ident}` has {count} unnamed fields; an event variant is \
                             a unit (`{ident}`), a newtype (`{ident}(Payload)`) or has named \
                             fields (`{ident} {{ .. }}`), so that its payload is a JSON object",
                        ),
                    ))
                }
            },
        };
        errors.finish_with(shape)
    }
}

/// Where an `#[event(...)]` attribute is written, which decides the keys it takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// On the enum: defaults for every variant.
    Enum,
    /// On a variant.
    Variant,
}

/// The keys of the `#[event(...)]` attributes of one enum or variant.
#[derive(Default)]
struct EventAttrs {
    /// `name = "..."`, with the span of the string.
    name: Option<(String, Span)>,
    /// `version = N`.
    version: Option<u32>,
}

impl EventAttrs {
    /// Reads every `#[event(...)]` among `attrs` (several are merged; a key given twice is
    /// an error).
    fn parse(attrs: &[Attribute], place: Place) -> Result<Self> {
        let mut parsed = Self::default();
        let mut errors = Errors::default();
        for attr in attrs.iter().filter(|attr| attr.path().is_ident("event")) {
            let result = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("name") {
                    if place == Place::Enum {
                        return Err(meta.error(
                            "`name` belongs on a variant: `#[event(name = \"...\")]` sets \
                             that variant's type name",
                        ));
                    }
                    let value = parse_name(&meta)?;
                    if parsed.name.is_some() {
                        return Err(meta.error("`name` is given twice"));
                    }
                    parsed.name = Some(value);
                    Ok(())
                } else if meta.path.is_ident("version") {
                    let value = parse_version(&meta)?;
                    if parsed.version.is_some() {
                        return Err(meta.error("`version` is given twice"));
                    }
                    parsed.version = Some(value);
                    Ok(())
                } else {
                    let key = meta.path.to_token_stream().to_string().replace(' ', "");
                    Err(meta.error(match place {
                        Place::Enum => format!(
                            "unknown key `{key}` in `#[event(...)]` on an enum; it takes \
                             `version = N`, the default schema version of its variants"
                        ),
                        Place::Variant => format!(
                            "unknown key `{key}` in `#[event(...)]` on a variant; it takes \
                             `name = \"...\"` and `version = N`"
                        ),
                    }))
                }
            });
            errors.take(result);
        }
        errors.finish()?;
        Ok(parsed)
    }
}

/// The string of `name = "..."`.
fn parse_name(meta: &ParseNestedMeta<'_>) -> Result<(String, Span)> {
    const EXPECTED: &str = "`name` takes a string literal, e.g. `name = \"account.opened\"`";
    let lit: Lit = meta
        .value()?
        .parse()
        .map_err(|error| Error::new(error.span(), EXPECTED))?;
    match lit {
        Lit::Str(lit) => Ok((lit.value(), lit.span())),
        other => Err(Error::new(other.span(), EXPECTED)),
    }
}

/// The integer of `version = N`, 1 or more.
fn parse_version(meta: &ParseNestedMeta<'_>) -> Result<u32> {
    const EXPECTED: &str = "`version` takes an integer literal, e.g. `version = 2`";
    let lit: Lit = meta
        .value()?
        .parse()
        .map_err(|error| Error::new(error.span(), EXPECTED))?;
    let Lit::Int(lit) = lit else {
        return Err(Error::new(lit.span(), EXPECTED));
    };
    let version: u32 = lit.base10_parse().map_err(|_| {
        Error::new(
            lit.span(),
            format!("`version` is an integer from 1 to {}", u32::MAX),
        )
    })?;
    if version == 0 {
        return Err(Error::new(
            lit.span(),
            "schema versions start at 1: `version = 0` is not a version",
        ));
    }
    Ok(version)
}

/// Checks a type name against what every store accepts: 1 to [`MAX_NAME_LEN`] bytes, no
/// control characters.
fn check_name(name: &str, span: Span) -> Result<()> {
    if name.is_empty() {
        return Err(Error::new(span, "an event type name cannot be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::new(
            span,
            format!(
                "an event type name is at most {MAX_NAME_LEN} bytes; this one has {}",
                name.len()
            ),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::new(
            span,
            "an event type name cannot hold control characters",
        ));
    }
    Ok(())
}

/// The error for a derive on something other than an enum, spanning `struct Name`.
fn not_an_enum(keyword: &dyn ToTokens, ident: &Ident, what: &str) -> Error {
    Error::new_spanned(
        quote!(#keyword #ident),
        format!(
            "`#[derive(Event)]` applies to enums, and `{}` is {what}: write the events as an \
             enum with one variant per event type",
            ident.unraw()
        ),
    )
}

/// Errors collected while reading, reported together.
#[derive(Default)]
struct Errors(Option<Error>);

impl Errors {
    /// Records `error`.
    fn push(&mut self, error: Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// The value of `result`, or `None` after recording its error.
    fn take<T>(&mut self, result: Result<T>) -> Option<T> {
        result.map_err(|error| self.push(error)).ok()
    }

    /// Every recorded error, as one.
    fn finish(self) -> Result<()> {
        self.0.map_or(Ok(()), Err)
    }

    /// The value of `result` if nothing went wrong, or every recorded error and
    /// `result`'s, as one.
    fn finish_with<T>(mut self, result: Result<T>) -> Result<T> {
        match (result, self.0.take()) {
            (Ok(value), None) => Ok(value),
            (Ok(_), Some(error)) | (Err(error), None) => Err(error),
            (Err(error), Some(mut first)) => {
                first.combine(error);
                Err(first)
            }
        }
    }
}

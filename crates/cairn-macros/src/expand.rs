//! Writing the `cairn_es::Event` implementation of a checked [`EventEnum`].
//!
//! Everything is emitted inside one anonymous `const _: () = { ... };` block, so the
//! helper types it needs never reach the user's namespace:
//!
//! - **Encoding** goes through a *shadow* of the enum: the same variants and fields (with
//!   their `#[serde(...)]` attributes), deriving `Serialize` with serde's `remote` and
//!   `untagged` options. serde then writes a variant's content alone (an object of the
//!   fields, or the newtype's inner value) straight from a borrow of the user's enum, and
//!   field attributes such as `skip_serializing_if` or `with` see the field's own type.
//!   Unit variants never reach the shadow: their payload is `{}`.
//! - **Decoding** matches the type name, then deserializes the payload into a helper
//!   struct holding that variant's fields (with their `#[serde(...)]` attributes) and
//!   moves them into the variant.
//!
//! Generated paths start at `::cairn_es` and reach serde through
//! `::cairn_es::__private`, so a user crate needs no dependency on `serde_json`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::ext::IdentExt;
use syn::{Attribute, Field};

use crate::input::{EventEnum, EventVariant, Shape};

/// The `impl cairn_es::Event` for `event_enum`, with its helpers.
pub(crate) fn expand(event_enum: &EventEnum) -> TokenStream {
    let ident = &event_enum.ident;
    let variants = &event_enum.variants;
    let serde = quote!(::cairn_es::__private::serde);
    let serde_crate = "::cairn_es::__private::serde";
    let json = quote!(::cairn_es::__private::serde_json);

    let event_types = variants.iter().map(event_type_literal);
    let event_type_arms = variants.iter().map(|variant| {
        let pattern = wildcard_pattern(variant);
        let literal = event_type_literal(variant);
        quote!(#pattern => #literal,)
    });

    let shadow = format_ident!("__CairnEventPayload");
    let needs_shadow = variants
        .iter()
        .any(|variant| !matches!(variant.shape, Shape::Unit));
    let shadow_enum = needs_shadow.then(|| {
        let shadow_variants = variants.iter().map(|variant| {
            let variant_ident = &variant.ident;
            match &variant.shape {
                Shape::Unit => quote!(#variant_ident),
                Shape::Newtype(field) => {
                    let attrs = serde_attrs(field);
                    let ty = &field.ty;
                    quote!(#variant_ident(#(#attrs)* #ty))
                }
                Shape::Struct(fields) => {
                    let fields = fields.iter().map(named_field);
                    quote!(#variant_ident { #(#fields),* })
                }
            }
        });
        let remote = ident.to_string();
        quote! {
            #[derive(#serde::Serialize)]
            #[serde(crate = #serde_crate, remote = #remote, untagged)]
            #[allow(dead_code)]
            enum #shadow {
                #(#shadow_variants,)*
            }
        }
    });

    let encode_arms = variants.iter().map(|variant| {
        let pattern = wildcard_pattern(variant);
        let name = &variant.name;
        match variant.shape {
            Shape::Unit => quote! {
                #pattern => ::core::result::Result::Ok(
                    #json::Value::Object(#json::Map::new())
                ),
            },
            Shape::Newtype(_) | Shape::Struct(_) => quote! {
                #pattern => #shadow::serialize(self, #json::value::Serializer)
                    .map_err(|source| ::cairn_es::EncodeError::new(#name, source)),
            },
        }
    });

    let decode_arms = variants.iter().map(|variant| {
        let variant_ident = &variant.ident;
        let name = &variant.name;
        let expecting = format!("an object with the fields of `{}`", variant_ident.unraw());
        let from_value = quote! {
            #json::from_value(__payload)
                .map_err(|error| ::cairn_es::DecodeError::payload(#name, error))?
        };
        let body = match &variant.shape {
            Shape::Unit => quote! {
                match __payload {
                    #json::Value::Object(_) | #json::Value::Null => {
                        ::core::result::Result::Ok(Self::#variant_ident)
                    }
                    _ => ::core::result::Result::Err(::cairn_es::DecodeError::payload(
                        #name,
                        "expected an object or null",
                    )),
                }
            },
            Shape::Newtype(field) => {
                let attrs = serde_attrs(field);
                let ty = &field.ty;
                quote! {
                    #[derive(#serde::Deserialize)]
                    #[serde(crate = #serde_crate)]
                    struct __CairnPayload(#(#attrs)* #ty);
                    let __CairnPayload(__value) = #from_value;
                    ::core::result::Result::Ok(Self::#variant_ident(__value))
                }
            }
            Shape::Struct(fields) => {
                let helper_fields = fields.iter().map(named_field);
                let moves = fields.iter().map(|field| {
                    let field_ident = &field.ident;
                    quote!(#field_ident: __value.#field_ident)
                });
                quote! {
                    #[derive(#serde::Deserialize)]
                    #[serde(crate = #serde_crate, expecting = #expecting)]
                    struct __CairnPayload { #(#helper_fields),* }
                    let __value: __CairnPayload = #from_value;
                    ::core::result::Result::Ok(Self::#variant_ident { #(#moves),* })
                }
            }
        };
        quote!(#name => { #body })
    });

    quote! {
        const _: () = {
            #shadow_enum

            #[automatically_derived]
            impl ::cairn_es::Event for #ident {
                fn event_types() -> &'static [::cairn_es::EventType] {
                    const EVENT_TYPES: &[::cairn_es::EventType] = &[#(#event_types),*];
                    EVENT_TYPES
                }

                fn event_type(&self) -> ::cairn_es::EventType {
                    match self {
                        #(#event_type_arms)*
                    }
                }

                fn encode(
                    &self,
                ) -> ::core::result::Result<#json::Value, ::cairn_es::EncodeError> {
                    match self {
                        #(#encode_arms)*
                    }
                }

                fn decode(
                    __event_type: &str,
                    __payload: #json::Value,
                ) -> ::core::result::Result<Self, ::cairn_es::DecodeError> {
                    match __event_type {
                        #(#decode_arms)*
                        __other => ::core::result::Result::Err(
                            ::cairn_es::DecodeError::UnknownType(
                                ::std::borrow::ToOwned::to_owned(__other),
                            ),
                        ),
                    }
                }
            }
        };
    }
}

/// `::cairn_es::EventType { name: "...", version: N }` for `variant`.
fn event_type_literal(variant: &EventVariant) -> TokenStream {
    let name = &variant.name;
    let version = variant.version;
    quote!(::cairn_es::EventType { name: #name, version: #version })
}

/// A pattern matching `variant` whatever it carries: `Self::A`, `Self::A(..)`,
/// `Self::A { .. }`.
fn wildcard_pattern(variant: &EventVariant) -> TokenStream {
    let ident = &variant.ident;
    match variant.shape {
        Shape::Unit => quote!(Self::#ident),
        Shape::Newtype(_) => quote!(Self::#ident(..)),
        Shape::Struct(_) => quote!(Self::#ident { .. }),
    }
}

/// A named field as written in a helper type: its `#[serde(...)]` attributes, name and
/// type (no visibility, no other attributes).
fn named_field(field: &Field) -> TokenStream {
    let attrs = serde_attrs(field);
    let ident = &field.ident;
    let ty = &field.ty;
    quote!(#(#attrs)* #ident: #ty)
}

/// The `#[serde(...)]` attributes of `field`, forwarded to the helpers.
fn serde_attrs(field: &Field) -> impl Iterator<Item = &Attribute> {
    field
        .attrs
        .iter()
        .filter(|attr| attr.path().is_ident("serde"))
}

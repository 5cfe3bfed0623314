// class-transformer ships no declaration next to its CommonJS storage module; this is its shape.
declare module 'class-transformer/cjs/storage.js' {
  export const defaultMetadataStorage: object;
}

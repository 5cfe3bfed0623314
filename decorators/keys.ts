/**
 * Every reflect-metadata key decorators/ reads or writes, declared once. Squall's own keys are
 * stored on the class constructor; the `design:*` keys are written by TypeScript
 * (emitDecoratorMetadata) on the prototype member.
 */
export const MetadataKey = {
  /** ReplicatedClassInfo, own metadata of a class decorated with @replicated. */
  replicated: 'squall:replicated',
  /** MethodRecord[] recorded by @ordered/@p2p on the class that declares them (own metadata). */
  methods: 'squall:methods',
  /** PersistentFieldRecord[] recorded by @persistent on the declaring class (own metadata). */
  persistentFields: 'squall:persistent-fields',
  /** SerializableRecord of a class whose instances the codec carries with their class intact. */
  serializable: 'squall:serializable',
} as const;

export const DesignKey = {
  paramTypes: 'design:paramtypes',
  returnType: 'design:returntype',
  type: 'design:type',
} as const;

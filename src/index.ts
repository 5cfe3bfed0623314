// Public exports of the squall package. Only what users call belongs here.
export * from './core/errors.js';
export * from './core/ids.js';

/**
 * The multicast limits of a layout profile: `[multicast]` for 'default', else `[multicast]` with
 * the `[subgroup.<profile>]` keys on top. Throws ConfigError when the profile has no section.
 */
import { ConfigError } from '../core/errors.js';
import type { SquallConfig } from '../config/schema.js';
import { multicastLimitsFromConfig, type MulticastLimits } from '../multicast/config.js';

export function multicastLimitsForProfile(config: SquallConfig, profile: string): MulticastLimits {
  if (profile === 'default') return multicastLimitsFromConfig(config.multicast);
  const section = config.subgroup[profile];
  if (section === undefined) {
    throw new ConfigError([{ key: `subgroup.${profile}`, message: `is named by the layout as a profile but is not in the config. Fix: add a [subgroup.${profile}] section (it may be empty)` }]);
  }
  return multicastLimitsFromConfig({ ...config.multicast, ...stripUndefined(section) }, `subgroup.${profile}`);
}

function stripUndefined<T extends object>(section: T): Partial<T> {
  return Object.fromEntries(Object.entries(section).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * `--device auto|gpu|cpu`, the same for every command that computes. auto: the WebGPU adapter when there is
 * one, else the CPU reference backend with a note on stderr; gpu: WebGPU or fail (NoAdapterError, exit 1);
 * cpu: the CPU reference backend (f32; slow, for checks). A GPU device is a scoped resource: destroyed when
 * the scope that acquired it closes.
 */
import { Effect, type Scope } from "effect";
import type { NoAdapterError } from "../core/errors.ts";
import type { DeviceChoice } from "../core/flags.ts";
import type { Backend } from "../engine/backend.ts";
import { CpuBackend } from "../engine/cpu.ts";
import { type AdapterOptions, adapterOptionsFromEnv, openGpu } from "../engine/gpu/device.ts";

export { DEVICE_FLAG, type DeviceChoice, DEVICES } from "../core/flags.ts";

export interface DeviceOptions {
  /** Adapter options (default: from the environment, BUPO_ADAPTER etc.). */
  readonly adapter?: AdapterOptions;
  /** Where auto's fallback note goes (default: stderr). */
  readonly note?: (message: string) => void;
}

/** The backend `choice` names, acquired in the current scope. */
export const acquireDevice = (
  choice: DeviceChoice,
  opts: DeviceOptions = {},
): Effect.Effect<Backend, NoAdapterError, Scope.Scope> => {
  if (choice === "cpu") return Effect.succeed(new CpuBackend("f32"));
  const gpu: Effect.Effect<Backend, NoAdapterError, Scope.Scope> = Effect.acquireRelease(
    openGpu(opts.adapter ?? adapterOptionsFromEnv()),
    (b) => Effect.sync(() => b.destroy()),
  );
  if (choice === "gpu") return gpu;
  return gpu.pipe(
    Effect.catchTag("NoAdapterError", () =>
      Effect.sync(() => {
        (opts.note ?? console.error)("no WebGPU adapter: computing on the CPU (f32; slow)");
        return new CpuBackend("f32") as Backend;
      })),
  );
};

/** Run `use` with the backend `choice` names; a GPU device is destroyed when `use` ends. */
export const withDevice = <A, E, R>(
  choice: DeviceChoice,
  use: (backend: Backend) => Effect.Effect<A, E, R>,
  opts?: DeviceOptions,
): Effect.Effect<A, E | NoAdapterError, Exclude<R, Scope.Scope>> =>
  Effect.scoped(Effect.flatMap(acquireDevice(choice, opts), use));

/** `deno task reward`: score the completions of a file with weighted rewards, one JSON line per row. */
import { defineCommand } from "./cli/flags.ts";
import { commandMain } from "./cli/main.ts";
import { REWARD_FLAGS, scoreFile } from "./training/score.ts";

export const REWARD = defineCommand({
  name: "reward",
  summary: "score the completions of a file with weighted rewards, one JSON line per row.",
  usage: [
    "deno task reward --reward NAME[:W],... --data FILE [--reward-timeout S] [--reward-pattern P] \\",
    "  [--completion-key K] [--answer-key K] [--limit N]",
  ],
  flags: REWARD_FLAGS,
  notes: `Rows need a completion (--completion-key, default completion) and a ground truth (ground_truth,
reward_model.ground_truth, solution or answer; or --answer-key). A row is finished (ended with a stop token)
when its "finished" is true or its "finish_reason" is "stop"; rows with neither count as finished.

Built-in rewards:
  math    the last \\boxed{...} (or \\fbox, else "the answer is X") against the ground truth, normalized as
          the MATH graders do and compared by value and symbolically (fractions, radicals, polynomials,
          tuples and intervals in order, sets in any order); part math/extracted
  exact   the final answer (or the whole completion), trimmed, equals the ground truth
  regex   the completion matches --reward-pattern
  format  the completion ended with a stop token and holds an answer; parts format/stopped, format/answer
A module path (./mine.ts) uses its default export (row, completion, {finished}) => number | {score, ...parts}
(async allowed), else an export named reward, else verl's compute_score(data_source, solution_str,
ground_truth, extra_info). Modules, math and regex run in child processes: a call that throws, returns a
non-finite value or runs past --reward-timeout (its process is killed) scores 0 and is counted in errors; scoring
goes on.
Output: {"row", "score" (the weighted sum), "parts" (each reward's score and parts), "errors", "failures"}.`,
});

/** Run the command; resolves to the exit code. */
export const main: (argv: readonly string[]) => Promise<number> = commandMain(
  REWARD,
  (args) => scoreFile(args.values),
);

if (import.meta.main) Deno.exit(await main(Deno.args));

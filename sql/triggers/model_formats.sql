-- What a trained model records for later use (docs/formats.md): its signature,
-- input example and environment, written by the worker with the model and copied
-- into the versions it is registered as. Written once: an UPDATE that changes a
-- value already recorded is refused, whoever the client, so a version and its model
-- never disagree about what the model takes or needs. A column still at its empty
-- default (a model saved before these columns existed) may be filled once. ML070.
CREATE OR REPLACE FUNCTION public.models_record_read_only()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'model %: its signature, input example and environment are written once', OLD.id
        USING ERRCODE = 'ML070',
              HINT = 'train and save a new model instead';
END;
$$;

CREATE TRIGGER models_record_read_only
BEFORE UPDATE OF signature, input_example, environment ON models
FOR EACH ROW
WHEN ((OLD.signature <> '{}'::jsonb AND NEW.signature IS DISTINCT FROM OLD.signature)
      OR (OLD.input_example IS NOT NULL AND NEW.input_example IS DISTINCT FROM OLD.input_example)
      OR (OLD.environment <> '{}'::jsonb AND NEW.environment IS DISTINCT FROM OLD.environment))
EXECUTE FUNCTION public.models_record_read_only();
